# The discrete cell: derived from the search's alphas, or (genotype.source in config) a
# published genotype or a genotype/legacy file, in which case no search runs for the dataset.
# With several search seeds, each seed's cell is derived here (seed_genotype) and rule select
# (select.smk) writes results/{dataset}/genotype.json instead of rule genotype.


rule genotype:
    input:
        genotype_input,
    output:
        "results/{dataset}/genotype.json",
    log:
        "logs/{dataset}/genotype.log",
    benchmark:
        "benchmarks/{dataset}/genotype.tsv"
    wildcard_constraints:
        dataset=NOT_SELECTING,
    conda:
        "../envs/nas.yaml"
    params:
        source=genotype_param,
        max_skip=genotype_max_skip,
        results=results_version("genotype"),
    script:
        "../scripts/genotype.py"


rule seed_genotype:
    input:
        "results/{dataset}/search/seed{seed}/alphas.json",
    output:
        "results/{dataset}/search/seed{seed}/genotype.json",
    log:
        "logs/{dataset}/search/seed{seed}_genotype.log",
    benchmark:
        "benchmarks/{dataset}/search/seed{seed}_genotype.tsv"
    wildcard_constraints:
        seed=SEED,
    conda:
        "../envs/nas.yaml"
    params:
        source=lambda wildcards, input: input[0],
        max_skip=genotype_max_skip,
        results=results_version("seed_genotype"),
    script:
        "../scripts/genotype.py"
