# DARTS neural architecture search: data -> search -> genotype -> train -> test (+ figures).
#   snakemake --cores 2                                   # the digits demo (default target)
#   snakemake results/mnist/test.json --cores 4 --resources gpu=4
#   snakemake --report report.html                        # summary, figures and tables, per dataset
# See README.md; settings in config/config.yaml (schema: workflow/schemas/config.schema.yaml).

from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"


rule all:
    default_target: True
    input:
        [out for name in config["targets"] for out in dataset_outputs(name)],
        "results/summary.tsv",


include: "workflow/rules/download.smk"
include: "workflow/rules/search.smk"
include: "workflow/rules/genotype.smk"
include: "workflow/rules/select.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/test.smk"
include: "workflow/rules/model.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/selection_report.smk"


# A failed job's one-line error (the last line of its log) is printed again when Snakemake
# exits, after its own closing lines: the last line on the console.
onerror:
    from nas_core.jobs import report_failed_jobs

    report_failed_jobs(log)


# The summary of every finished dataset (task, metric, parameters, genotype source, time):
# written to results/summary.tsv and printed when Snakemake exits, after its own closing lines.
onsuccess:
    from nas_core.summary import print_summary_at_exit

    print_summary_at_exit(
        "results",
        {name: dataset.genotype_source for name, dataset in DATASETS.items()},
    )
