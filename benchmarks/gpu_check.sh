#!/usr/bin/env bash
# The one prepared device check (installs nothing): the CUDA tests, then the benchmark's gpu preset
# (paper's search network, 3x32x32, C=16, 8 cells: batch 64 first and second order, each
# also replayed as a CUDA graph, and each implementation at the largest candidate batch it
# fits), ours in bf16 autocast + channels_last against the reference in float32 on the same GPU
# in the same call; then the memory estimate against the measured peak and the largest graphene
# search batch with and without recompute (benchmarks/memory_estimate.py).
#
#   bash benchmarks/gpu_check.sh            # REF=path/to/reference_darts.py (default .bench_ref/)
#
# The ../shared folder does not travel to the device: copy the reference into .bench_ref/ (an
# ignored folder, listed in .git/info/exclude) and carry it.  Results go to $OUT when set.
set -u
cd "$(dirname "$0")/.."
PY=${PY:-python3}
REF=${REF:-.bench_ref/reference_darts.py}
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export NAS_REFERENCE_DARTS="$PWD/$REF"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0), 'cudnn', torch.backends.cudnn.version())"
echo "== CUDA tests"
timeout ${TEST_TIMEOUT:-150} $PY -m pytest -q -p no:cacheprovider tests/test_search_speed_math.py \
    tests/test_graphs.py tests/test_model_eval.py -k "cuda or graphs" -rf --tb=short 2>&1 | tail -40
echo "== benchmark, gpu preset"
timeout ${BENCH_TIMEOUT:-200} $PY benchmarks/search_step.py --preset gpu --reference "$REF" \
    --steps ${STEPS:-5} --warmup 2 --no-partial --largest-batch ${BATCHES:-64,256,512,1024} \
    --json "$OUT/gpu_bench.json" 2>&1 | tee "$OUT/gpu_bench.txt"
echo "== data-parallel training (NCCL), 1..all visible GPUs"
timeout ${SCALE_TIMEOUT:-120} $PY benchmarks/train_scaling.py --preset gpu --steps 5 --warmup 2 \
    2>&1 | tee "$OUT/train_scaling.txt"
echo "== memory: the stages' estimate against torch.cuda.max_memory_allocated; the largest"
echo "   graphene (1x30x80, C=16, 8 cells) search batch on this card, with and without recompute"
timeout ${MEMORY_TIMEOUT:-200} $PY benchmarks/memory_estimate.py --device cuda --largest graphene \
    --json "$OUT/memory_estimate.json" 2>&1 | tee "$OUT/memory_estimate.txt"
echo "== done"
