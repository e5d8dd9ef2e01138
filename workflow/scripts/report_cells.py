"""Snakemake adapter, rule report_cells: figures from nas_core.report."""

from nas_core.jobs import log_to

log_to(snakemake.log[0], snakemake.rule)

from nas_core import report  # noqa: E402

report.cell_figures(
    snakemake.input[0],
    snakemake.output.normal,
    snakemake.output.reduce,
    snakemake.output.normal_dot,
    snakemake.output.reduce_dot,
    name=snakemake.wildcards.dataset,
)
