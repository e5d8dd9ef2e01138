# Figures as plain files under results/{dataset}/figures/, flagged for `snakemake --report`.


rule report_search:
    input:
        history="results/{dataset}/search/history.json",
        alphas="results/{dataset}/search/alphas.json",
    output:
        curves=report(
            "results/{dataset}/figures/search_curves.png",
            caption="../report/search_curves.rst",
            category="{dataset}",
            subcategory="1 search",
        ),
        normal=report(
            "results/{dataset}/figures/alphas_normal.png",
            caption="../report/alphas.rst",
            category="{dataset}",
            subcategory="1 search",
        ),
        reduce=report(
            "results/{dataset}/figures/alphas_reduce.png",
            caption="../report/alphas.rst",
            category="{dataset}",
            subcategory="1 search",
        ),
    params:
        nas_core=NAS_CORE_REPORT_VERSION,
    log:
        "logs/{dataset}/report_search.log",
    benchmark:
        "benchmarks/{dataset}/report_search.tsv"
    conda:
        "../envs/nas.yaml"
    script:
        "../scripts/report_search.py"


rule report_cells:
    input:
        "results/{dataset}/genotype.json",
    output:
        normal=report(
            "results/{dataset}/figures/cell_normal.png",
            caption="../report/cells.rst",
            category="{dataset}",
            subcategory="2 genotype",
        ),
        reduce=report(
            "results/{dataset}/figures/cell_reduce.png",
            caption="../report/cells.rst",
            category="{dataset}",
            subcategory="2 genotype",
        ),
        normal_dot="results/{dataset}/figures/cell_normal.dot",
        reduce_dot="results/{dataset}/figures/cell_reduce.dot",
    params:
        nas_core=NAS_CORE_REPORT_VERSION,
    log:
        "logs/{dataset}/report_cells.log",
    benchmark:
        "benchmarks/{dataset}/report_cells.tsv"
    conda:
        "../envs/nas.yaml"
    script:
        "../scripts/report_cells.py"


rule report_train:
    input:
        "results/{dataset}/train/history.json",
    output:
        report(
            "results/{dataset}/figures/train_curves.png",
            caption="../report/train_curves.rst",
            category="{dataset}",
            subcategory="3 training",
        ),
    params:
        nas_core=NAS_CORE_REPORT_VERSION,
    log:
        "logs/{dataset}/report_train.log",
    benchmark:
        "benchmarks/{dataset}/report_train.tsv"
    conda:
        "../envs/nas.yaml"
    script:
        "../scripts/report_train.py"


rule report_test:
    input:
        "results/{dataset}/test.json",
    output:
        report(
            "results/{dataset}/figures/test_metrics.png",
            caption="../report/test_metrics.rst",
            category="{dataset}",
            subcategory="4 test",
        ),
    params:
        nas_core=NAS_CORE_REPORT_VERSION,
    log:
        "logs/{dataset}/report_test.log",
    benchmark:
        "benchmarks/{dataset}/report_test.tsv"
    conda:
        "../envs/nas.yaml"
    script:
        "../scripts/report_test.py"
