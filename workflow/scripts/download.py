"""Snakemake adapter, rule download: nas_core.data.download_data -> resources/{dataset}/download.json."""

from nas_core.jobs import log_to

log_to(snakemake.log[0], snakemake.rule)

from nas_core.data import download_data  # noqa: E402

download_data(snakemake.params.data, root=snakemake.params.root, manifest=snakemake.output[0])
