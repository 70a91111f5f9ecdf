"""``invert phrases``: InstructBrush's initialization for exemplar pairs."""
from __future__ import annotations

from pathlib import Path

import click

import invert
from invert.defaults import DEFAULT_MODEL
from invert.display import printable
from invert.settings.limits import MAX_RESOLUTION, MIN_RESOLUTION

from .common import json_text, quiet_option, threads_option, user_errors
from .numbers import number_option
from .options import phrase_options


@click.command()
@click.argument("pairs", required=False, type=click.Path(path_type=Path))
@click.option("--before", type=click.Path(path_type=Path), help="A single pair: the before image ...")
@click.option("--after", type=click.Path(path_type=Path), help="... and the after image.")
@phrase_options
@number_option("--resolution", kind=int, minimum=MIN_RESOLUTION, maximum=MAX_RESOLUTION, default=None,
               help="Square size the pairs are brought to; default: the model's own, as fit (512 for IP2P, 32 for "
                    "toy).")
@click.option("--clip-model", default=None, help="As for fit; default: openai/clip-vit-large-patch14.")
@click.option("--model", default=None, envvar="INVERT_MODEL",
              help="The base model fit would use: its folder's own clip/ (as the toy model has) when --clip-model is "
                   f"not given, its vocab.txt, its image size. Default: {DEFAULT_MODEL}. [env: INVERT_MODEL]")
@click.option("--device", default="auto", show_default=True, envvar="INVERT_DEVICE",
              help="auto, cuda, cuda:1, mps or cpu. [env: INVERT_DEVICE]")
@threads_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@quiet_option
@user_errors
def phrases(pairs, before, after, vocab, phrases_top, phrases_threshold, phrases_relative_threshold, phrases_template,
            resolution, clip_model, model, device, as_json, quiet):
    """Rank vocabulary phrases for exemplar PAIRS and show InstructBrush's initial instruction.

    \b
      invert phrases pairs/
      invert phrases pairs/ --vocab default --vocab mediums --phrases-threshold 1 --phrases-relative-threshold --json
    """
    from invert.backbones import resolve_device
    from invert.backbones.model_info import model_resolution
    from invert.clip import clip_name_for, load_clip
    from invert.fitting.phrases import unique_phrases
    from invert.pairs import load_pairs
    from invert.vocab import load_vocab, model_vocab

    # IP2P's 512 when the configs of a hub model are not in the cache (fit would download them)
    size = resolution or model_resolution(model or DEFAULT_MODEL) or 512
    befores, afters = load_pairs(invert.find_pairs(pairs, before, after), size)
    clip = load_clip(clip_name_for(clip_model, model), resolve_device(device))
    threshold, relative = phrases_threshold, phrases_relative_threshold
    choice = unique_phrases(clip, befores, afters, load_vocab(vocab or model_vocab(model)), phrases_top, threshold,
                            relative, phrases_template)
    if as_json:
        click.echo(json_text({"init_text": choice.text, "p_x": choice.p_x, "p_y": choice.p_y,
                               "score_x": choice.score_x, "score_y": choice.score_y,
                               "threshold": threshold, "relative": relative,
                               "candidates": choice.candidates}, indent=2))
        return
    unit = " (x spread)" if relative else ""
    for side in ("after", "before"):  # phrases come from vocabulary files: control characters shown escaped
        click.echo(f"{side} candidates (sensitivity = mean sim to afters - to befores; relative = in spreads):")
        for c in (c for c in choice.candidates if c["side"] == side):
            click.echo(f"  {c['sensitivity']:+.4f}  {c['relative']:+.2f}  {printable(c['phrase'])}")
    click.echo(f"p_x: {printable(choice.p_x)}  p_y: {printable(choice.p_y)}  (threshold {threshold}{unit})")
    click.echo(f"init text: {choice.text!r}")
