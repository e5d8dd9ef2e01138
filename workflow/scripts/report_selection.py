"""Snakemake adapter, rule report_selection: the figure of nas_core.report_selection."""

from nas_core.jobs import log_to

log_to(snakemake.log[0], snakemake.rule)

from nas_core.report_selection import selection_figure  # noqa: E402

selection_figure(snakemake.input[0], snakemake.output[0])
