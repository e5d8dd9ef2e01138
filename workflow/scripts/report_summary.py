"""Snakemake adapter, rule report_summary: results/summary.tsv and its HTML table
(nas_core.summary; the Snakefile's onsuccess writes the same TSV and prints it)."""

from nas_core.jobs import log_to

log_to(snakemake.log[0], snakemake.rule)

from nas_core.summary import write_summary  # noqa: E402

write_summary(
    snakemake.params.results,
    snakemake.params.sources,
    snakemake.output.tsv,
    snakemake.output.html,
)
