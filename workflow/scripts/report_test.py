"""Snakemake adapter, rule report_test: figures from nas_core.report."""



from nas_core.jobs import log_to

log_to(snakemake.log[0], snakemake.rule)

from nas_core import report  # noqa: E402

report.test_figure(snakemake.input[0], snakemake.output[0])
