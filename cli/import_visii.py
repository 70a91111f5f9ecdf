"""``invert import-visii``: convert an instruction saved by VISII's official code to an .inst file."""
from __future__ import annotations

from pathlib import Path

import click

from invert.defaults import DEFAULT_MODEL

from .common import check_output, quiet_option, user_errors
from .options import model_options


@click.command("import-visii")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="The .inst file to write.")
@click.option("--init-text", default=None, help="The prompt the VISII fit started from; default: the run's "
              "learned_prompt.txt beside FILE or one folder up.")
@click.option("--force", is_flag=True, help="Overwrite OUTPUT if it exists.")
@quiet_option
@model_options(DEFAULT_MODEL)
@user_errors
def import_visii_command(file, output, init_text, force, quiet, model, device, dtype):
    """Convert FILE, a prompt embedding saved by the official VISII code (prompt_embeds_N.pt), to OUTPUT.

    FILE is a torch pickle; it is read with torch.load(weights_only=True), which loads plain tensors only and
    refuses anything that would run code. The learned positions are those of the initial prompt's tokens; the
    model is the one the embedding was learned on (its fixed positions are checked against it). VISII's saved
    noises are not imported: apply draws invert's own from the stored seed.

    \b
      invert import-visii logs/exp/prompt_embeds_999.pt -o visii.inst --model ip2p
    """
    from invert.backbones import load_editor
    from invert.visii_import import import_visii

    check_output(output, force)
    inst = import_visii(file, load_editor(model, device, dtype), init_text)
    inst.save(output, force=force)
    click.echo(f"wrote {output} (visii, {inst.meta.num_tokens} learned tokens, init text {inst.meta.init_text!r})")
