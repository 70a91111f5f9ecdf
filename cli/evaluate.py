"""``invert eval``: score an instruction on held-out test pairs."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import click

import invert
from invert.errors import InvertError

from .common import check_output, user_errors
from .options import model_options

DIRECTION_SOURCES = {"given": "the --train-pairs'", "instruction": "the training pairs' (stored in the file)",
                     "test pairs": "the test pairs' own before -> after"}


@click.command("eval")
@click.argument("instruction", type=click.Path(path_type=Path))
@click.argument("test_pairs", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (mean, images, settings).")
@click.option("--csv", "as_csv", is_flag=True, help="Print one CSV row per image, then the mean.")
@click.option("--sheet", type=click.Path(path_type=Path), default=None,
              help="Write a contact sheet PNG: before | truth | result, one row per test pair.")
@click.option("--steps", default=20, show_default=True, type=click.IntRange(min=1))
@click.option("--seed", default=0, show_default=True, type=int, help="Noise seed with --fresh-noise.")
@click.option("--fresh-noise", is_flag=True, help="Draw new noise from --seed instead of the fit's stored noise.")
@click.option("--resolution", default=None, type=click.IntRange(min=8),
              help="Square size the test pairs are brought to; default: the fit's resolution.")
@click.option("--clip-model", default=None, help="CLIP for the CLIP metrics; default: the one recorded in the file.")
@click.option("--no-clip", is_flag=True, help="Only PSNR and SSIM (no CLIP model needed).")
@click.option("--train-pairs", type=click.Path(path_type=Path), default=None,
              help="Training pairs for the directional similarity; default: the direction stored in the file.")
@click.option("--allow-model-mismatch", is_flag=True, help="Use an instruction learned on other base weights.")
@click.option("--force", is_flag=True, help="Overwrite --sheet if it exists.")
@model_options(None)
@user_errors
def eval_command(instruction, test_pairs, as_json, as_csv, sheet, steps, seed, fresh_noise, resolution, clip_model,
                 no_clip, train_pairs, allow_model_mismatch, force, model, device, dtype):
    """Apply INSTRUCTION to the befores of TEST_PAIRS and compare with their afters.

    Reports per image and averaged: PSNR, SSIM, CLIP image similarity (result vs truth) and CLIP directional
    similarity (TOP-Bench: mean input -> result direction against the training pairs' direction). LPIPS is not
    reported: its weights cannot be had offline.

    \b
      invert eval night.inst examples/toy/night/test --model toy
      invert eval night.inst test/ --json | jq .mean.psnr
      invert eval night.inst test/ --csv --sheet night_sheet.png
    """
    from invert.clip import clip_name_for, load_clip
    from invert.editor import DEFAULT_MODEL, load_editor
    from invert.evaluation import METRICS, evaluate
    from invert.losses import clip_direction
    from invert.grid import contact_sheet, save_image
    from invert.instruction import Instruction
    from invert.pairs import load_pairs

    if as_json and as_csv:
        raise InvertError("choose one of --json and --csv")
    if sheet is not None:
        check_output(sheet, force)
    inst = Instruction.load(instruction)
    size = resolution or int(inst.meta.get("resolution", 512))
    found = invert.find_pairs(test_pairs)
    befores, truths = load_pairs(found, size)
    editor = load_editor(model or inst.meta.get("base_model", DEFAULT_MODEL), device, dtype)
    clip, direction = None, None
    if not no_clip:
        clip = load_clip(clip_name_for(clip_model or inst.meta.get("clip_model") or None, editor.model_id),
                         editor.device)
        if train_pairs is not None:
            direction = clip_direction(clip, *load_pairs(invert.find_pairs(train_pairs), size))
    scores, results = evaluate(inst, befores, truths, clip=clip, train_direction=direction, editor=editor,
                               steps=steps, seed=seed, fresh_noise=fresh_noise,
                               allow_model_mismatch=allow_model_mismatch)
    for pair, row in zip(found, scores["images"]):
        row["name"] = pair.name
    if sheet is not None:
        save_image(contact_sheet([list(r) for r in zip(befores, truths, results)]), sheet, force)
    columns = [m for m in METRICS if m in scores["mean"]]
    if as_json:
        click.echo(json.dumps({"instruction": str(instruction), "test_pairs": str(test_pairs), "steps": steps,
                               "resolution": size, **scores}, indent=2))
    elif as_csv:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["name", *columns])
        for row in scores["images"] + [{"name": "mean", **scores["mean"]}]:
            writer.writerow([row["name"], *(f"{row[c]:.4f}" for c in columns)])
        click.echo(out.getvalue(), nl=False)
    else:
        click.echo(f"{'image':24s} " + " ".join(f"{c:>14s}" for c in columns))
        for row in scores["images"] + [{"name": "mean", **scores["mean"]}]:
            click.echo(f"{row['name'][:24]:24s} " + " ".join(f"{row[c]:14.4f}" for c in columns))
        if clip is not None:
            click.echo(f"clip_direction is against {DIRECTION_SOURCES[scores['direction_source']]} direction")
    if sheet is not None:
        click.echo(f"wrote {sheet}", err=as_json or as_csv)
