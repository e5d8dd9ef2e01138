"""Snakemake adapter, rule model_card: nas_core.stages.model_card.write_model_card on the job's
GPU(s)."""

from pathlib import Path

from nas_core.jobs import gpu_job, log_to

log_to(snakemake.log[0], snakemake.rule)

with gpu_job(snakemake.resources.gpu, snakemake.threads):
    from nas_core.stages.model_card import write_model_card

    write_model_card(
        snakemake.params.data,
        snakemake.params.train,
        Path(snakemake.input.test).parent,
        dataset=snakemake.wildcards.dataset,
        data_root=snakemake.params.root,
        genotype_source=snakemake.params.genotype_source,
        card_out=snakemake.output.card,
    )
