# The discrete cell: derived from the search's alphas, or (genotype.source in config) a
# published genotype or a genotype/legacy file, in which case no search runs for the dataset.


rule genotype:
    input:
        genotype_input,
    output:
        "results/{dataset}/genotype.json",
    params:
        source=genotype_param,
        nas_core=NAS_CORE_VERSION,
    log:
        "logs/{dataset}/genotype.log",
    benchmark:
        "benchmarks/{dataset}/genotype.tsv"
    conda:
        "../envs/nas.yaml"
    script:
        "../scripts/genotype.py"
