"""``invert encode``: an instruction from exemplar pairs in one forward pass of an edit encoder."""
from __future__ import annotations

from pathlib import Path

import click

from invert.settings import FitSettings

from .common import check_output, quiet_option, user_errors
from .fit import CLIP_MODEL_HELP
from .options import model_options, settings_options

# A refined answer's settings, the same options as fit's (--init encoder).
refine_options = settings_options(FitSettings, only={"encoder_refine", "encoder_refine_lr", "seed"})


@click.command()
@click.argument("pairs", required=False, type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="The .inst file to write.")
@click.option("--encoder", "encoder_file", type=click.Path(path_type=Path), default=None,
              help="The edit encoder file ('invert encoder train'); default: the one the model's folder ships.")
@click.option("--before", type=click.Path(path_type=Path), help="A single pair: the before image ...")
@click.option("--after", type=click.Path(path_type=Path), help="... and the after image.")
@click.option("--clip-model", default=None, help=CLIP_MODEL_HELP)
@click.option("--allow-model-mismatch", is_flag=True, help="Use an encoder trained on other base weights.")
@refine_options
@quiet_option
@click.option("--force", is_flag=True, help="Overwrite OUTPUT if it exists.")
@model_options(None)
@user_errors
def encode(pairs, output, encoder_file, before, after, clip_model, allow_model_mismatch, encoder_refine,
           encoder_refine_lr, seed, quiet, force, model, device, dtype):
    """Write the instruction an edit encoder gives for exemplar PAIRS to OUTPUT, without fitting: an ordinary .inst
    that apply, mix, libraries and eval take.

    PAIRS as for 'invert fit' (or one pair with --before and --after); any number of pairs, in any order.
    With --encoder-refine N, the encoder's weights over its basis states are then fitted to the pairs for N steps
    (seconds on the toy model; an edit the encoder never saw gains most).

    \b
      invert encode pairs/ -o night.inst --model toy
      invert encode pairs/ -o night.inst --model toy --encoder-refine 100
      invert encode pairs/ -o night.inst --encoder visii.safetensors
    """
    import invert
    from invert.encoder import EncoderFile, find_encoder
    from invert.errors import InvertError

    check_output(output, force)
    refinement = FitSettings(init="encoder", encoder_refine=encoder_refine, encoder_refine_lr=encoder_refine_lr,
                             seed=seed)  # checked before anything loads
    found = invert.find_pairs(pairs, before, after)
    if encoder_file is None and model is None:
        raise InvertError("give --encoder FILE, or --model whose folder ships an encoder")
    encoder = EncoderFile.load(find_encoder(encoder_file, model or ""))
    inst = invert.encode(found, encoder, model=model, clip_model=clip_model, device=device, dtype=dtype,
                         allow_model_mismatch=allow_model_mismatch, refine=refinement.encoder_refine,
                         refine_lr=refinement.encoder_refine_lr, seed=refinement.seed)
    inst.save(output, force=force)
    refined = f", {inst.meta.encoded_by.rpartition('; ')[2]}" if inst.meta.steps else ""
    click.echo(f"wrote {output} ({inst.method}, from {len(found)} pairs{refined} in {inst.meta.fit_seconds:.2f} s)",
               err=quiet)
