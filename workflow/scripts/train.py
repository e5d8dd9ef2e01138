"""Snakemake adapter, rule train: nas_core.stages.run_train on the job's GPU(s).

One data-parallel process per granted device; on Slurm with the plugin's `mpi` resource and
`tasks: N`, N Slurm tasks (possibly on several nodes) that join one process group."""

from pathlib import Path

from nas_core.jobs import gpu_job, log_to, slurm_tasks, srun_stage

log_to(snakemake.log[0], snakemake.rule)
out_dir = Path(snakemake.output.model).parent
tasks = slurm_tasks(snakemake.resources)

if tasks > 1:
    srun_stage(
        "train",
        tasks,
        snakemake.wildcards.dataset,
        {"data": snakemake.params.data, "train": snakemake.params.train},
        data_root=snakemake.params.root,
        log=snakemake.log[0],
        args=["--genotype", snakemake.input.genotype, "--out", out_dir],
    )
else:
    with gpu_job(snakemake.resources.gpu, snakemake.threads) as devices:
        from nas_core.stages import run_train

        run_train(
            snakemake.params.data,
            snakemake.params.train,
            Path(snakemake.input.genotype),
            out_dir,
            data_root=snakemake.params.root,
            nproc=len(devices) or None,  # one data-parallel process per granted device
        )
