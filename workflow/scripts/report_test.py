"""Snakemake adapter, rule report_test: the test split's figure and table (nas_core.report)."""

from nas_core.jobs import log_to

log_to(snakemake.log[0], snakemake.rule)

from nas_core import report  # noqa: E402

for draw, out in ((report.test_figure, snakemake.output.figure),
                  (report.test_table, snakemake.output.table)):
    draw(
        snakemake.input.test,
        out,
        snakemake.input.predictions,
        name=snakemake.wildcards.dataset,
        card=snakemake.input.card,
    )
