# DARTS search: the supernet's weights and alphas. Checkpoints in search/checkpoints/ (not
# outputs) let an interrupted search resume when the job is rerun.


rule search:
    input:
        "resources/{dataset}/download.json",
    output:
        alphas="results/{dataset}/search/alphas.json",
        supernet="results/{dataset}/search/supernet.pt",
        history="results/{dataset}/search/history.json",
    params:
        data=data_cfg,
        search=stage_cfg("search"),
        root=data_root,
        nas_core=NAS_CORE_VERSION,
    resources:
        gpu=gpus("search"),
    threads: 4
    log:
        "logs/{dataset}/search.log",
    benchmark:
        "benchmarks/{dataset}/search.tsv"
    conda:
        "../envs/nas.yaml"
    script:
        "../scripts/search.py"
