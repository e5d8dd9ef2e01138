# Figures of a multi-seed dataset (figures() in common.smk lists them only then): each seed's
# search curves and alphas in results/{dataset}/figures/seed{seed}/, and the candidates side
# by side in results/{dataset}/figures/selection.png.


rule report_search_seed:
    input:
        history="results/{dataset}/search/seed{seed}/history.json",
        alphas="results/{dataset}/search/seed{seed}/alphas.json",
    output:
        curves=report(
            "results/{dataset}/figures/seed{seed}/search_curves.png",
            caption="../report/search_curves.rst",
            category="{dataset}",
            subcategory="1 search (seed {seed})",
            labels={
                "dataset": "{dataset}",
                "figure": "search curves (seed {seed})",
                "cell": "-",
            },
        ),
        normal=report(
            "results/{dataset}/figures/seed{seed}/alphas_normal.png",
            caption="../report/alphas.rst",
            category="{dataset}",
            subcategory="1 search (seed {seed})",
            labels={
                "dataset": "{dataset}",
                "figure": "alpha weights (seed {seed})",
                "cell": "normal",
            },
        ),
        reduce=report(
            "results/{dataset}/figures/seed{seed}/alphas_reduce.png",
            caption="../report/alphas.rst",
            category="{dataset}",
            subcategory="1 search (seed {seed})",
            labels={
                "dataset": "{dataset}",
                "figure": "alpha weights (seed {seed})",
                "cell": "reduction",
            },
        ),
    log:
        "logs/{dataset}/report_search/seed{seed}.log",
    benchmark:
        "benchmarks/{dataset}/report_search/seed{seed}.tsv"
    wildcard_constraints:
        seed=SEED,
    conda:
        "../envs/nas.yaml"
    params:
        nas_core=NAS_CORE_REPORT_VERSION,
    script:
        "../scripts/report_search.py"


rule report_selection:
    input:
        "results/{dataset}/selection.json",
    output:
        report(
            "results/{dataset}/figures/selection.png",
            caption="../report/selection.rst",
            category="{dataset}",
            subcategory="2 genotype",
            labels={"dataset": "{dataset}", "figure": "selection", "cell": "-"},
        ),
    log:
        "logs/{dataset}/report_selection.log",
    benchmark:
        "benchmarks/{dataset}/report_selection.tsv"
    conda:
        "../envs/nas.yaml"
    params:
        nas_core=NAS_CORE_REPORT_VERSION,
    script:
        "../scripts/report_selection.py"
