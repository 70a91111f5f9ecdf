"""``invert eval``: score an instruction on held-out test pairs."""
from __future__ import annotations

import csv
import io
from pathlib import Path

import click

import invert
from invert.display import printable
from invert.errors import InvertError
from invert.settings import ApplySettings, build_settings
from invert.settings.apply import BATCH_SIZE, BATCH_SIZE_LIMITS, with_fresh_noise_flag
from invert.settings.fields import flag
from invert.settings.limits import MAX_RESOLUTION, MIN_RESOLUTION

from .common import check_output, json_text, quiet_option, user_errors
from .numbers import number_option
from .options import fresh_noise_option, model_options, sampling_options
from .progress import sampling

DIRECTION_SOURCES = {"given": "the --train-pairs'", "instruction": "the training pairs' (stored in the file)",
                     "test pairs": "the test pairs' own before -> after"}


@click.command("eval")
@click.argument("instruction", type=click.Path(path_type=Path))
@click.argument("test_pairs", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object: instruction, test_pairs, settings, mean, clip_direction_of_means, "
                   "direction_source, images.")
@click.option("--csv", "as_csv", is_flag=True, help="Print one CSV row per image, then the mean.")
@click.option("--sheet", type=click.Path(path_type=Path), default=None,
              help="Write a contact sheet PNG: before | truth | result under titles, each row's PSNR beside it.")
@sampling_options
@fresh_noise_option
@number_option("--resolution", kind=int, minimum=MIN_RESOLUTION, maximum=MAX_RESOLUTION, default=None,
               help="Square size the test pairs are brought to; default: the fit's resolution.")
@number_option("--batch-size", kind=int, **BATCH_SIZE_LIMITS, default=BATCH_SIZE, show_default=True,
              help="Images per sampling batch; scores do not depend on it (up to one level of rounding).")
@click.option("--clip-model", default=None, help="CLIP for the CLIP metrics; default: the one recorded in the file.")
@click.option("--no-clip", is_flag=True, help="Only PSNR and SSIM (no CLIP model needed).")
@click.option("--train-pairs", type=click.Path(path_type=Path), default=None,
              help="Training pairs for the directional similarity; default: the direction stored in the file.")
@click.option("--allow-model-mismatch", is_flag=True, help="Use an instruction learned on other base weights.")
@click.option("--force", is_flag=True, help="Overwrite --sheet if it exists.")
@quiet_option
@model_options(None)
@user_errors
def eval_command(instruction, test_pairs, as_json, as_csv, sheet, steps, seed, fresh_noise, noise, resolution,
                 batch_size, clip_model, no_clip, train_pairs, allow_model_mismatch, force, quiet, model, device,
                 dtype):
    """Apply INSTRUCTION to the befores of TEST_PAIRS and compare with their afters.

    Reports per image and averaged: PSNR, SSIM, CLIP image similarity (result vs truth) and CLIP directional
    similarity (the input -> result direction against the training pairs' direction); also TOP-Bench's set
    score, the direction between the mean input and the mean result (not the mean of the column). LPIPS is not
    reported: its weights cannot be had offline. Ctrl-C or SIGTERM stops after the current sampling step and
    reports the pairs done.

    \b
      invert eval night.inst examples/toy/night/test --model toy
      invert eval night.inst test/ --json | jq .mean.psnr
      invert eval night.inst test/ --csv --sheet night_sheet.png
    """
    from invert.api import same_size_batches
    from invert.backbones import load_editor
    from invert.backbones.model_info import recorded_model
    from invert.clip import clip_name_for, load_clip
    from invert.evaluation import METRICS, score_instruction
    from invert.fitting.losses import clip_direction
    from invert.instruction import Instruction
    from invert.pairs import load_pairs

    from .grid import contact_sheet, save_image

    if as_json and as_csv:
        raise InvertError("choose one of --json and --csv")
    if sheet is not None:
        check_output(sheet, force)
    settings = build_settings(ApplySettings, {"steps": steps, "seed": seed,
                                              "noise": with_fresh_noise_flag(noise, fresh_noise)}, flag)
    mode = settings.noise_mode()
    inst = Instruction.load(instruction)
    size = resolution or inst.meta.resolution or 512
    found = invert.find_pairs(test_pairs)
    befores, truths = load_pairs(found, size)
    editor = load_editor(model or recorded_model(inst.meta.base_model, instruction), device, dtype)
    clip, direction = None, None
    if not no_clip:
        clip = load_clip(clip_name_for(clip_model or inst.meta.clip_model or None, editor.model_id),
                         editor.device)
        if train_pairs is not None:
            direction = clip_direction(clip, *load_pairs(invert.find_pairs(train_pairs), size))
    results = []
    with sampling([len(b) for b in same_size_batches(befores, batch_size)], steps, quiet, "eval") as progress:
        def keep(done) -> None:
            results.extend(done)
            progress.finished(len(done))

        invert.apply(inst, befores, editor=editor, settings=settings, allow_model_mismatch=allow_model_mismatch,
                     batch_size=batch_size, on_images=keep, on_step=progress.on_step)
    n = len(results)  # all of them, unless a signal stopped the run: then the pairs done are reported
    if n:
        scores = score_instruction(inst, befores[:n], results, truths[:n], clip=clip, train_direction=direction)
        for pair, row in zip(found, scores["images"]):
            row["name"] = pair.name
        settings = {"steps": steps, "resolution": size, "noise": mode, "batch_size": batch_size,
                    "seed": settings.seeds(inst.meta.noise_seed)[0],
                    "model": editor.model_id, "clip_model": clip.name if clip else None}
        _report(scores, settings, instruction, test_pairs, as_json, as_csv, [m for m in METRICS if m in scores["mean"]])
        if sheet is not None:
            rows = [list(r) for r in zip(befores, truths, results)]
            labels = [f"{row['name']}\nPSNR {row['psnr']:.2f} dB" for row in scores["images"]]
            save_image(contact_sheet(rows, ["before", "truth", "result"], labels), sheet, force)
            click.echo(f"wrote {sheet}", err=as_json or as_csv)
    if progress.signum is not None:
        raise progress.interrupted(f"{n} of {len(befores)} test pairs scored" + (" (the scores above are of those)"
                                                                               if n else ""))


def _report(scores: dict, settings: dict, instruction: Path, test_pairs: Path, as_json: bool, as_csv: bool,
            columns: list[str]) -> None:
    rows = scores["images"] + [{"name": "mean", **scores["mean"]}]
    if as_json:
        click.echo(json_text({"instruction": str(instruction), "test_pairs": str(test_pairs), "settings": settings,
                               **scores}, indent=2))
    elif as_csv:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["name", *columns])
        for row in rows:  # a pair's name is its files': control characters in it are shown escaped
            writer.writerow([printable(row["name"]), *(f"{row[c]:.4f}" for c in columns)])
        click.echo(out.getvalue(), nl=False)
    else:
        click.echo(f"{'image':24s} " + " ".join(f"{c:>14s}" for c in columns))
        for row in rows:
            click.echo(f"{printable(row['name'])[:24]:24s} " + " ".join(f"{row[c]:14.4f}" for c in columns))
        if "clip_direction_of_means" in scores:
            click.echo(f"clip_direction is against {DIRECTION_SOURCES[scores['direction_source']]} direction; the mean "
                       "row is its column's mean. TOP-Bench's score, the direction between the mean input and the "
                       f"mean result: {scores['clip_direction_of_means']:.4f}")
