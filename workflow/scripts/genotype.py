"""Snakemake adapter, rule genotype: nas_core.stages.run_genotype -> results/{dataset}/genotype.json."""

from pathlib import Path

from nas_core.jobs import log_to

log_to(snakemake.log[0], snakemake.rule)

from nas_core.stages import run_genotype  # noqa: E402

run_genotype(snakemake.params.source, Path(snakemake.output[0]),
             max_skip=snakemake.params.max_skip)
