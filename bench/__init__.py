"""Benchmarks: `./dev.sh bench` prints one table. Targets live here, not in timed unit tests."""
