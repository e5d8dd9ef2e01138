# DARTS neural architecture search: data -> search -> genotype -> train -> test (+ figures).
#   snakemake --cores 2                                   # the digits demo (default target)
#   snakemake results/mnist/test.json --cores 4 --resources gpu=4
#   snakemake --report report.html                        # figures and captions, per dataset
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


include: "workflow/rules/download.smk"
include: "workflow/rules/search.smk"
include: "workflow/rules/genotype.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/test.smk"
include: "workflow/rules/report.smk"


# A failed job's one-line error (the last line of its log) is printed again when Snakemake
# exits, after its own closing lines: the last line on the console.
onerror:
    from nas_core.jobs import report_failed_jobs

    report_failed_jobs(log)
