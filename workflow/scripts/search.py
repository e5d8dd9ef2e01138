"""Snakemake adapter, rule search: nas_core.stages.run_search on the job's GPU(s)."""

from pathlib import Path

from nas_core.jobs import gpu_job, log_to

log_to(snakemake.log[0], snakemake.rule)

with gpu_job(snakemake.resources.gpu, snakemake.threads) as devices:
    from nas_core.stages import run_search

    run_search(
        snakemake.params.data,
        snakemake.params.search,
        Path(snakemake.output.alphas).parent,
        data_root=snakemake.params.root,
        nproc=len(devices) or None,  # one data-parallel process per granted device
    )
