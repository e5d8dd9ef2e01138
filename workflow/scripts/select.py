"""Snakemake adapter, rule select: nas_core.stages.select.run_select -> selection.json and the
winner's genotype.json."""

from nas_core.jobs import log_to

log_to(snakemake.log[0], snakemake.rule)

from nas_core.stages.select import run_select  # noqa: E402

run_select(
    [{"seed": seed, "history": history, "timings": timings, "genotype": genotype,
      "search_timings": search_timings}
     for seed, history, timings, genotype, search_timings in zip(
         snakemake.params.seeds, snakemake.input.histories, snakemake.input.timings,
         snakemake.input.genotypes, snakemake.input.search_timings, strict=True)],
    snakemake.output.selection,
    snakemake.output.genotype,
    cfg=snakemake.params.select,
)
