# Train the evaluation network built from genotype.json (checkpoints in train/checkpoints/).


rule train:
    input:
        data="resources/{dataset}/download.json",
        genotype="results/{dataset}/genotype.json",
    output:
        model="results/{dataset}/train/model.pt",
        history="results/{dataset}/train/history.json",
    log:
        "logs/{dataset}/train.log",
    benchmark:
        "benchmarks/{dataset}/train.tsv"
    conda:
        "../envs/nas.yaml"
    threads: gpu_threads("train", 4)
    resources:
        gpu=gpus("train"),
    params:
        data=data_cfg,
        train=stage_cfg("train"),
        root=data_root,
        results=results_version("train"),
    script:
        "../scripts/train.py"
