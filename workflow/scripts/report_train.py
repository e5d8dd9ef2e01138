"""Snakemake adapter, rule report_train: figures from nas_core.report."""

from nas_core.jobs import log_to

log_to(snakemake.log[0], snakemake.rule)

from nas_core import report  # noqa: E402

report.train_figure(snakemake.input[0], snakemake.output[0], name=snakemake.wildcards.dataset)
