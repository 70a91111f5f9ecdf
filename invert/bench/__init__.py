"""Benchmarks and reference loops; they import the core package, the core never imports them."""
