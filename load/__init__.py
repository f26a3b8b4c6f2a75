"""Load generation and benchmarks (run from the repository root)."""
