"""The leaf layer: the vocabulary every other layer shares.

Samples and their flags, canonical channels, health records, config building blocks and
config errors, durations, the YAML-with-lines loader, backoff and the plugin registry. Nothing
here imports `drivers` or `gateway` (the import-linter contract in pyproject.toml says so).
"""
