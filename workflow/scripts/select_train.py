"""Snakemake adapter, rule select_train: nas_core.stages.run_train with the `select:` block on
one search seed's cell, on the job's GPU(s) (the selection's training from scratch)."""

from pathlib import Path

from nas_core.jobs import gpu_job, log_to

log_to(snakemake.log[0], snakemake.rule)

with gpu_job(snakemake.resources.gpu, snakemake.threads) as devices:
    from nas_core.stages import run_train

    run_train(
        snakemake.params.data,
        snakemake.params.select,
        Path(snakemake.input.genotype),
        Path(snakemake.output.model).parent,
        data_root=snakemake.params.root,
        nproc=len(devices) or None,  # one data-parallel process per granted device
    )
