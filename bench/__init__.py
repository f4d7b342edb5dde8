"""fastvae benchmarks (not shipped): ``python -m bench``; see bench/README.md."""
