"""``invert export-lora``: a lora instruction's adapter for diffusers' ``load_lora_weights``."""
from __future__ import annotations

from pathlib import Path

import click

from .main import user_errors


@click.command("export-lora")
@click.argument("instruction", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="The .safetensors file to write.")
@click.option("--reverse", is_flag=True, help="Export the negated adapter, which undoes the edit.")
@click.option("--force", is_flag=True, help="Overwrite OUTPUT if it exists.")
@user_errors
def export_lora(instruction, output, reverse, force):
    """Write a lora INSTRUCTION's adapter as a diffusers LoRA file.

    \b
      invert export-lora sketch.inst -o sketch_lora.safetensors
      python -c "pipe.load_lora_weights('sketch_lora.safetensors'); pipe(prompt='', image=img)"
    """
    from invert.instruction import Instruction
    from invert.lora_export import export_lora as export

    inst = Instruction.load(instruction)
    export(inst, output, force=force, reverse=reverse)
    guidance = inst.meta.get("guidance") or {}
    click.echo(f"wrote {output}: load it with pipe.load_lora_weights({str(output)!r}) and call pipe(prompt="
               f"{inst.meta.get('init_text', '')!r}, image=..., guidance_scale={guidance.get('text', 7.5)}, "
               f"image_guidance_scale={guidance.get('image', 1.5)}) as it was fitted")
