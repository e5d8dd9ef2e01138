# Figures (and the test metrics' HTML table) as plain files under results/{dataset}/figures/,
# flagged for `snakemake --report` with labels (dataset, figure, cell or view).


rule report_search:
    input:
        history=single_search("history.json"),
        alphas=single_search("alphas.json"),
    output:
        curves=report(
            "results/{dataset}/figures/search_curves.png",
            caption="../report/search_curves.rst",
            category="{dataset}",
            subcategory="1 search",
            labels={"dataset": "{dataset}", "figure": "search curves", "cell": "-"},
        ),
        normal=report(
            "results/{dataset}/figures/alphas_normal.png",
            caption="../report/alphas.rst",
            category="{dataset}",
            subcategory="1 search",
            labels={
                "dataset": "{dataset}",
                "figure": "alpha weights",
                "cell": "normal",
            },
        ),
        reduce=report(
            "results/{dataset}/figures/alphas_reduce.png",
            caption="../report/alphas.rst",
            category="{dataset}",
            subcategory="1 search",
            labels={
                "dataset": "{dataset}",
                "figure": "alpha weights",
                "cell": "reduction",
            },
        ),
    log:
        "logs/{dataset}/report_search.log",
    benchmark:
        "benchmarks/{dataset}/report_search.tsv"
    conda:
        "../envs/nas.yaml"
    params:
        nas_core=NAS_CORE_REPORT_VERSION,
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
            labels={"dataset": "{dataset}", "figure": "cell", "cell": "normal"},
        ),
        reduce=report(
            "results/{dataset}/figures/cell_reduce.png",
            caption="../report/cells.rst",
            category="{dataset}",
            subcategory="2 genotype",
            labels={"dataset": "{dataset}", "figure": "cell", "cell": "reduction"},
        ),
        normal_dot="results/{dataset}/figures/cell_normal.dot",
        reduce_dot="results/{dataset}/figures/cell_reduce.dot",
    log:
        "logs/{dataset}/report_cells.log",
    benchmark:
        "benchmarks/{dataset}/report_cells.tsv"
    conda:
        "../envs/nas.yaml"
    params:
        nas_core=NAS_CORE_REPORT_VERSION,
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
            labels={"dataset": "{dataset}", "figure": "training curves"},
        ),
    log:
        "logs/{dataset}/report_train.log",
    benchmark:
        "benchmarks/{dataset}/report_train.tsv"
    conda:
        "../envs/nas.yaml"
    params:
        nas_core=NAS_CORE_REPORT_VERSION,
    script:
        "../scripts/report_train.py"


rule report_test:
    input:
        test="results/{dataset}/test.json",
        predictions="results/{dataset}/test_predictions.csv",
        card="results/{dataset}/model.json",
    output:
        table=report(
            "results/{dataset}/figures/test_metrics.html",
            caption="../report/test_table.rst",
            category="{dataset}",
            subcategory="4 test",
            labels={
                "dataset": "{dataset}",
                "figure": "test metrics",
                "view": "metrics table",
            },
        ),
        figure=report(
            "results/{dataset}/figures/test_metrics.png",
            caption="../report/test_metrics.rst",
            category="{dataset}",
            subcategory="4 test",
            labels={"dataset": "{dataset}", "figure": "test metrics", "view": "plots"},
        ),
    log:
        "logs/{dataset}/report_test.log",
    benchmark:
        "benchmarks/{dataset}/report_test.tsv"
    conda:
        "../envs/nas.yaml"
    params:
        nas_core=NAS_CORE_REPORT_VERSION,
    script:
        "../scripts/report_test.py"


# The summary of every finished dataset (nas_core.summary): results/summary.tsv, and the same
# table as HTML, the first thing the report shows (workflow/report/workflow.rst).
rule report_summary:
    input:
        [f"results/{name}/test.json" for name in config["targets"]],
    output:
        tsv="results/summary.tsv",
        html=report(
            "results/summary.html",
            caption="../report/summary.rst",
            category="Summary",
            labels={"dataset": "all", "figure": "summary table"},
        ),
    log:
        "logs/report_summary.log",
    localrule: True
    conda:
        "../envs/nas.yaml"
    params:
        results=lambda wildcards, output: str(Path(output.tsv).parent),
        sources={name: dataset.genotype_source for name, dataset in DATASETS.items()},
    script:
        "../scripts/report_summary.py"
