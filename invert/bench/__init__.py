"""Benchmarks and reference loops: speed and quality measurements that import the core; the core never
imports them."""
