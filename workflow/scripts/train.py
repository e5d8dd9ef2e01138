"""Snakemake adapter, rule train: nas_core.stages.run_train on the job's GPU(s)."""

from pathlib import Path

from nas_core.jobs import gpu_job, log_to

log_to(snakemake.log[0], snakemake.rule)

with gpu_job(snakemake.resources.gpu, snakemake.threads) as devices:
    from nas_core.stages import run_train

    run_train(
        snakemake.params.data,
        snakemake.params.train,
        Path(snakemake.input.genotype),
        Path(snakemake.output.model).parent,
        data_root=snakemake.params.root,
        nproc=len(devices) or None,  # one data-parallel process per granted device
    )
