"""Snakemake adapter, rule test: nas_core.stages.run_test on the job's GPU(s)."""

from pathlib import Path

from nas_core.jobs import gpu_job, log_to

log_to(snakemake.log[0], snakemake.rule)

with gpu_job(snakemake.resources.gpu, snakemake.threads):
    from nas_core.stages import run_test

    run_test(
        snakemake.params.data,
        snakemake.params.train,
        snakemake.params.test,
        Path(snakemake.input.genotype),
        Path(snakemake.input.model),
        Path(snakemake.output.json),
        predictions=Path(snakemake.output.predictions),
        data_root=snakemake.params.root,
    )
