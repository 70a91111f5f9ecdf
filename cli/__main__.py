"""``python -m invert.cli``: the same as the ``invert`` command."""
from .main import cli

cli()
