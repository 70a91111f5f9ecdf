"""``python -m benchmarks``: the benchmarks' commands (speed, quality) from a checkout of invert."""
from .cli import bench

bench(prog_name="python -m benchmarks")
