"""invert's research code, outside the library a user installs: benchmarks (speed, quality, growth, precision),
studies and ablations, the reference loops (VISII's official training step), and the trainers of the shipped toy
models. Run from a checkout: ``python -m benchmarks speed ...``, ``python -m benchmarks.oracle ...``. They import
the library; the library never imports them (an import contract in pyproject.toml)."""
