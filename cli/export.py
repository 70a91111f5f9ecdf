"""``invert export-lora`` and ``invert export-embeds``: an instruction in the form plain diffusers code uses."""
from __future__ import annotations

from pathlib import Path

import click

from .common import check_output, user_errors


def _export(instruction: Path, output: Path, kind: str, force: bool, reverse: bool = False):
    """Write the file atomically through the instruction's method (no model is loaded)."""
    from invert.errors import InstructionFileError
    from invert.instruction import Instruction
    from invert.methods import method_class
    from invert.writing import write_atomically

    check_output(output, force)
    inst = Instruction.load(instruction)
    cls = method_class(inst.method)
    try:
        write_atomically(output, lambda tmp: cls.export(kind, inst.tensors, inst.meta, tmp, reverse), force=force)
    except InstructionFileError as exc:  # the method's own checks do not know the file's name
        raise InstructionFileError(f"{instruction}: {exc}") from None
    return inst


def _guidance(inst) -> str:
    """The fit's guidance as the pipeline call's keyword arguments (a FLUX pipeline has no image guidance)."""
    from invert.backbones import backbone_class

    arguments = backbone_class(inst.meta.backbone).pipeline_guidance(inst.meta.text_guidance, inst.meta.image_guidance)
    return ", ".join(f"{k}={v}" for k, v in arguments.items())


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
    inst = _export(instruction, output, "lora", force, reverse)
    click.echo(f"wrote {output}: load it with pipe.load_lora_weights({str(output)!r}) and call pipe(prompt="
               f"{inst.meta.init_text!r}, image=..., {_guidance(inst)}) as it was fitted")


@click.command("export-embeds")
@click.argument("instruction", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="The .safetensors file to write.")
@click.option("--force", is_flag=True, help="Overwrite OUTPUT if it exists.")
@user_errors
def export_embeds(instruction, output, force):
    """Write a visii INSTRUCTION's prompt embedding as a safetensors file for a plain diffusers pipeline's
    prompt_embeds (and, for SDXL and FLUX.1 Kontext, its pooled vector as pooled_prompt_embeds).

    \b
      invert export-embeds sketch.inst -o sketch_embeds.safetensors
      python -c "e = safetensors.torch.load_file('sketch_embeds.safetensors'); pipe(**e, image=img)"
    """
    from safetensors import safe_open

    inst = _export(instruction, output, "embeds", force)
    with safe_open(str(output), "pt") as written:  # the pipeline call's argument names
        names = ", ".join(written.keys())
    click.echo(f"wrote {output} ({names}): pipe(**load_file({str(output)!r}), image=..., {_guidance(inst)})")
