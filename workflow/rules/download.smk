# Fetch a dataset's files once, before any job reads them (search, train and test depend on the
# marker), so parallel jobs never race to download. digits has no files but gets a marker too.
# A dataset of local files (netcdf without source, image-folder, ...) checks them here instead:
# they are inputs (ancient: their mtime alone triggers nothing) and `content`, the sha256 of
# their bytes, is a param, so an edit reruns download and, through download.json (sha256 and
# size of each file), every later stage; a `touch` reruns nothing (common.smk, local data).
# `results` is the data layer's results version (nas_core.versions.DATA), recorded in
# download.json: a bump reruns download and every later stage (each carries DATA too).


rule download:
    input:
        local_data_input,
    output:
        "resources/{dataset}/download.json",
    log:
        "logs/{dataset}/download.log",
    benchmark:
        "benchmarks/{dataset}/download.tsv"
    conda:
        "../envs/nas.yaml"
    params:
        data=data_cfg,
        root=data_root,
        content=local_data_content,
        results=results_version("download"),
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
    log:
        "logs/unknown_dataset/{top}/{unknown}/{path}.log",
    wildcard_constraints:
        top="results|resources|logs|benchmarks",
        unknown=f"(?!(?:{_KNOWN})/)[^/]+",
        path=".+",
    conda:
        "../envs/nas.yaml"
    shell:
        "exit 1"
