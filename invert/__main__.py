"""``python -m invert``: the ``invert`` command."""
from invert.cli.main import cli

cli(prog_name="invert")
