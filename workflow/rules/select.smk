# Selection among the search seeds (datasets with more than one seed; the DARTS protocol): each
# seed's cell is trained from scratch briefly with the `select:` block (select_train: one GPU
# job per seed, run_train on the training part, scored on its held-out part, never the test
# split), then the CPU rule select writes results/{dataset}/selection.json (every candidate,
# the rule, the winner; ties: lower seed) and the winner's results/{dataset}/genotype.json.


rule select_train:
    input:
        data="resources/{dataset}/download.json",
        genotype="results/{dataset}/search/seed{seed}/genotype.json",
    output:
        model="results/{dataset}/select/seed{seed}/model.pt",
        history="results/{dataset}/select/seed{seed}/history.json",
        timings="results/{dataset}/select/seed{seed}/timings.json",
    log:
        "logs/{dataset}/select/seed{seed}.log",
    benchmark:
        "benchmarks/{dataset}/select/seed{seed}.tsv"
    wildcard_constraints:
        seed=SEED,
    conda:
        "../envs/nas.yaml"
    threads: gpu_threads("select", 4)
    resources:
        gpu=gpus("select"),
    params:
        data=data_cfg,
        select=stage_cfg("select"),
        root=data_root,
        results=results_version("select_train"),
    script:
        "../scripts/select_train.py"


rule select:
    input:
        histories=per_seed("results/{dataset}/select/seed{seed}/history.json"),
        timings=per_seed("results/{dataset}/select/seed{seed}/timings.json"),
        genotypes=per_seed("results/{dataset}/search/seed{seed}/genotype.json"),
        search_timings=per_seed("results/{dataset}/search/seed{seed}/timings.json"),
    output:
        selection="results/{dataset}/selection.json",
        genotype="results/{dataset}/genotype.json",
    log:
        "logs/{dataset}/select.log",
    benchmark:
        "benchmarks/{dataset}/select.tsv"
    wildcard_constraints:
        dataset=SELECTING,
    conda:
        "../envs/nas.yaml"
    params:
        seeds=lambda wildcards: search_seeds(wildcards.dataset),
        select=stage_cfg("select"),
        results=results_version("select"),
    script:
        "../scripts/select.py"
