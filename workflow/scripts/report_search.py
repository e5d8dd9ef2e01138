"""Snakemake adapter, rule report_search: figures from nas_core.report."""



from nas_core.jobs import log_to

log_to(snakemake.log[0], snakemake.rule)

from nas_core import report  # noqa: E402

report.search_figures(
    snakemake.input.history,
    snakemake.output.curves,
    snakemake.output.normal,
    snakemake.output.reduce,
    alphas=snakemake.input.alphas,
)
