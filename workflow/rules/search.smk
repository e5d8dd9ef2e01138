# DARTS search: the supernet's weights and alphas, one job per search seed (search.seeds; null:
# [search.seed]) in results/{dataset}/search/seed{seed}/, each a GPU job of its own: with
# --resources gpu=4 four seeds search at once, each on its own device. Checkpoints in
# search/seed{seed}/checkpoints/ (not outputs) let an interrupted search resume when rerun.


rule search:
    input:
        "resources/{dataset}/download.json",
    output:
        alphas="results/{dataset}/search/seed{seed}/alphas.json",
        supernet="results/{dataset}/search/seed{seed}/supernet.pt",
        history="results/{dataset}/search/seed{seed}/history.json",
        timings="results/{dataset}/search/seed{seed}/timings.json",
    log:
        "logs/{dataset}/search/seed{seed}.log",
    benchmark:
        "benchmarks/{dataset}/search/seed{seed}.tsv"
    wildcard_constraints:
        seed=SEED,
    conda:
        "../envs/nas.yaml"
    threads: gpu_threads("search", 4)
    resources:
        gpu=gpus("search"),
    params:
        data=data_cfg,
        search=search_cfg,
        root=data_root,
        results=results_version("search"),
    script:
        "../scripts/search.py"
