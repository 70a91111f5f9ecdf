"""``invert inspect``: what an .inst file holds."""
from __future__ import annotations

import json
from pathlib import Path

import click

from invert.display import printable

from .common import json_text, user_errors


@click.command()
@click.argument("instruction", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@user_errors
def inspect(instruction, as_json):
    """Show what an .inst file holds: method, base model, init text, settings, tensors.

    \b
      invert inspect sketch.inst
      invert inspect sketch.inst --json | jq .meta.init_text
    """
    from invert.instruction import Instruction

    inst = Instruction.load(instruction)
    meta = inst.meta.values()
    info = {"file": str(instruction), "method": inst.method, "meta": meta,
            "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")}
                        for k, v in sorted(inst.tensors.items())}}
    if as_json:
        click.echo(json_text(info, indent=2, sort_keys=True))
        return
    # Every name and value comes from the file: control characters in them are shown escaped (--json escapes
    # them as JSON does).
    click.echo(f"{instruction}: {printable(inst.method)} instruction")
    for key in sorted(meta):
        value = meta[key]
        click.echo(f"  {printable(key)}: {printable(json.dumps(value) if isinstance(value, (dict, list)) else value)}")
    click.echo("  tensors:")
    for name, t in info["tensors"].items():
        click.echo(f"    {printable(name)}: {t['dtype']} {t['shape']}")
