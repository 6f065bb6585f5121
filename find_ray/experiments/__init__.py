"""The experiments behind docs/: alignment over seeds, the sweep, the ablation, noise transfer,
policy spectra, scale, Serve load, throughput. `benchmarks/*.py` are their command lines; each
writes its figures to benchmarks/results/<name>/ (run from the repository root)."""
