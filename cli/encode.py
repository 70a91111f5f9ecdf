"""``invert encode``: an instruction from exemplar pairs in one forward pass of an edit encoder."""
from __future__ import annotations

from pathlib import Path

import click

from .common import check_output, quiet_option, user_errors
from .fit import CLIP_MODEL_HELP
from .options import model_options


@click.command()
@click.argument("pairs", required=False, type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="The .inst file to write.")
@click.option("--encoder", "encoder_file", type=click.Path(path_type=Path), default=None,
              help="The edit encoder file ('invert encoder train'); default: the one the model's folder ships.")
@click.option("--before", type=click.Path(path_type=Path), help="A single pair: the before image ...")
@click.option("--after", type=click.Path(path_type=Path), help="... and the after image.")
@click.option("--clip-model", default=None, help=CLIP_MODEL_HELP)
@click.option("--allow-model-mismatch", is_flag=True, help="Use an encoder trained on other base weights.")
@quiet_option
@click.option("--force", is_flag=True, help="Overwrite OUTPUT if it exists.")
@model_options(None)
@user_errors
def encode(pairs, output, encoder_file, before, after, clip_model, allow_model_mismatch, quiet, force, model, device,
           dtype):
    """Write the instruction an edit encoder gives for exemplar PAIRS to OUTPUT, without fitting: an ordinary .inst
    that apply, mix, libraries and eval take.

    PAIRS as for 'invert fit' (or one pair with --before and --after); any number of pairs, in any order.

    \b
      invert encode pairs/ -o night.inst --model toy
      invert encode pairs/ -o night.inst --encoder visii.safetensors
    """
    import invert
    from invert.encoder import EncoderFile, find_encoder
    from invert.errors import InvertError

    check_output(output, force)
    found = invert.find_pairs(pairs, before, after)
    if encoder_file is None and model is None:
        raise InvertError("give --encoder FILE, or --model whose folder ships an encoder")
    encoder = EncoderFile.load(find_encoder(encoder_file, model or ""))
    inst = invert.encode(found, encoder, model=model, clip_model=clip_model, device=device, dtype=dtype,
                         allow_model_mismatch=allow_model_mismatch)
    inst.save(output, force=force)
    click.echo(f"wrote {output} ({inst.method}, from {len(found)} pairs in {inst.meta.fit_seconds:.2f} s)",
               err=quiet)
