"""Throughput benchmark harness: ours vs HF accelerate, HF generate and FlexGen 0.1.8 under one budget."""
from .runner import ALL_SYSTEMS, Bench, BenchConfig, main_run, save, table

__all__ = ["ALL_SYSTEMS", "Bench", "BenchConfig", "main_run", "save", "table"]
