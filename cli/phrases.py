"""``invert phrases``: InstructBrush's initialization for exemplar pairs."""
from __future__ import annotations

import json
from pathlib import Path

import click

import invert

from .common import user_errors
from .options import phrase_options


@click.command()
@click.argument("pairs", required=False, type=click.Path(path_type=Path))
@click.option("--before", type=click.Path(path_type=Path), help="A single pair: the before image ...")
@click.option("--after", type=click.Path(path_type=Path), help="... and the after image.")
@phrase_options
@click.option("--resolution", default=512, show_default=True, type=click.IntRange(min=8))
@click.option("--clip-model", default=None, help="As for fit; default: openai/clip-vit-large-patch14.")
@click.option("--model", default=None, envvar="INVERT_MODEL",
              help="Use this base model folder's own clip/ (as the toy model has) when --clip-model is not given.")
@click.option("--device", default="auto", show_default=True, envvar="INVERT_DEVICE")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@user_errors
def phrases(pairs, before, after, vocab, top, threshold, relative_threshold, template, resolution, clip_model, model,
            device, as_json):
    """Rank vocabulary phrases for exemplar PAIRS and show InstructBrush's initial instruction.

    \b
      invert phrases pairs/
      invert phrases pairs/ --vocab default --vocab mediums --threshold 1 --relative-threshold --json
    """
    from invert.clip import clip_name_for, load_clip
    from invert.editor import resolve_device
    from invert.pairs import load_pairs
    from invert.phrases import unique_phrases
    from invert.vocab import load_vocab, model_vocab

    befores, afters = load_pairs(invert.find_pairs(pairs, before, after), resolution)
    clip = load_clip(clip_name_for(clip_model, model), resolve_device(device))
    choice = unique_phrases(clip, befores, afters, load_vocab(vocab or model_vocab(model)), top, threshold,
                            relative_threshold, template)
    if as_json:
        click.echo(json.dumps({"init_text": choice.text, "p_x": choice.p_x, "p_y": choice.p_y,
                               "score_x": choice.score_x, "score_y": choice.score_y,
                               "threshold": threshold, "relative": relative_threshold,
                               "candidates": choice.candidates}, indent=2))
        return
    unit = " (x spread)" if relative_threshold else ""
    for side in ("after", "before"):
        click.echo(f"{side} candidates (sensitivity = mean sim to afters - to befores; relative = in spreads):")
        for c in (c for c in choice.candidates if c["side"] == side):
            click.echo(f"  {c['sensitivity']:+.4f}  {c['relative']:+.2f}  {c['phrase']}")
    click.echo(f"p_x: {choice.p_x}  p_y: {choice.p_y}  (threshold {threshold}{unit})")
    click.echo(f"init text: {choice.text!r}")
