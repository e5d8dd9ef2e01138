# Fetch a dataset's files once, before any job reads them (search, train and test depend on the
# marker), so parallel jobs never race to download. digits has no files but gets a marker too.


rule download:
    output:
        "resources/{dataset}/download.json",
    params:
        data=data_cfg,
        root=data_root,
    log:
        "logs/{dataset}/download.log",
    benchmark:
        "benchmarks/{dataset}/download.tsv"
    conda:
        "../envs/nas.yaml"
    script:
        "../scripts/download.py"


# A target under a dataset folder that is not configured (results/mnsit/test.json) matches only
# this rule, whose input function stops the DAG before any job with a message naming the
# dataset (otherwise Snakemake would only say that no rule produces the file). It never runs.
rule unknown_dataset:
    input:
        refuse_unknown_dataset,
    output:
        "{top}/{unknown}/{path}",
    wildcard_constraints:
        top="results|resources|logs|benchmarks",
        unknown=f"(?!(?:{_KNOWN})/)[^/]+",
        path=".+",
    log:
        "logs/unknown_dataset/{top}/{unknown}/{path}.log",
    conda:
        "../envs/nas.yaml"
    shell:
        "exit 1"
