"""Snakemake adapter, rules report_search / report_search_seed: figures from nas_core.report."""

from nas_core.jobs import log_to

log_to(snakemake.log[0], snakemake.rule)

from nas_core import report  # noqa: E402

report.search_figures(
    snakemake.input.history,
    snakemake.output.curves,
    snakemake.output.normal,
    snakemake.output.reduce,
    alphas=snakemake.input.alphas,
    name=snakemake.wildcards.dataset,
)
