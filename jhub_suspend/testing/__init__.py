"""Helpers for jhub-suspend's tests, the demo's self-check and the benchmarks."""
