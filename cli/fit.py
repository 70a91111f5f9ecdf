"""``invert fit``: learn an instruction from exemplar pairs."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

import invert
from invert.defaults import DEFAULT_MODEL
from invert.settings.fit import SAVE_EVERY_LIMITS
from invert.writing import output_exists

from .common import announce_stop, check_output, json_text, quiet_option, saved, user_errors
from .numbers import number_option
from .options import (config_option, fit_low_memory_option, fit_settings_options, given_settings, method_option,
                      model_options, pop_settings, sources)
from .signals import stop_on_signals

if TYPE_CHECKING:
    from invert.instruction import Metadata

CLIP_MODEL_HELP = ("transformers CLIP (hub id or folder) or open_clip:ARCH/TAG; default: the model folder's clip/ "
                   "if it has one, else openai/clip-vit-large-patch14.")


@click.command()
@click.argument("pairs", required=False, type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="The .inst file to write.")
@click.option("--before", type=click.Path(path_type=Path), help="A single pair: the before image ...")
@click.option("--after", type=click.Path(path_type=Path), help="... and the after image.")
@method_option
@fit_settings_options
@click.option("--clip-model", default=None, help=CLIP_MODEL_HELP)
@number_option("--save-every", kind=int, **SAVE_EVERY_LIMITS, default=0, help="Write OUTPUT.step-N.inst every N steps.")
@click.option("--resume", type=click.Path(path_type=Path), help="Continue a stopped fit from the state it saved "
              "(OUTPUT.ckpt, written on Ctrl-C, SIGTERM or divergence); give the same arguments otherwise.")
@click.option("--json", "as_json", is_flag=True, help="Print what the fit found as one JSON object: the init text (and "
              "each candidate's score), the validation curve, the kept step and the fit check.")
@quiet_option
@click.option("--force", is_flag=True, help="Overwrite OUTPUT if it exists.")
@fit_low_memory_option
@model_options(DEFAULT_MODEL)
@config_option
@click.pass_context
@user_errors
def fit(ctx, pairs, output, before, after, method, clip_model, save_every, resume, as_json, quiet, force, low_memory,
        model, device, dtype, **values):
    """Learn an instruction from exemplar PAIRS and write it to OUTPUT.

    PAIRS is a folder with before/ and after/ subfolders (files matched by stem), or a folder of
    NAME_before.EXT / NAME_after.EXT files; or give one pair with --before and --after. Options not given come
    from --config, then from the model folder's invert.json (the toy model's: --lr 1e-2 --guidance 3), then
    from the defaults shown.

    \b
      invert fit pairs/ -o sketch.inst
      invert fit --before a.jpg --after b.jpg -o sketch.inst --steps 500
      invert fit pairs/ -o sketch.inst --method brush --phrases-threshold 1 --phrases-relative-threshold
      invert fit pairs/ -o sketch.inst --method lora --lora-rank 8 --reverse
      invert fit pairs/ -o sketch.inst --config fit.toml      # fit.toml: steps = 500 and so on
    """
    from invert.fitting.checkpoint import FitStopped

    options = given_settings(ctx, pop_settings(values))
    check_output(output, force)  # before any work, not after the fit
    found = invert.find_pairs(pairs, before, after)

    def snapshot(step: int) -> Path:
        return output.with_name(f"{output.stem}.step-{step}.inst")

    def checkpoint(inst, step):
        inst.save(snapshot(step), force=True)

    state_path = output.with_name(f"{output.name}.ckpt")
    # The files the fit may write besides OUTPUT, probed now: a name past the file system's limit is refused
    # before the fit, not when a stopped fit's state would be lost for it.
    output_exists(state_path)
    if save_every:
        last = (_steps(model, method, options) - 1) // save_every * save_every  # the last snapshot's step
        if last:
            output_exists(snapshot(last))
    with stop_on_signals(announce_stop) as stop:
        try:
            inst = invert.fit(found, method, model=model, device=device, dtype=dtype, clip_model=clip_model,
                              quiet=quiet, save_every=save_every, checkpoint=checkpoint, resume=resume,
                              should_stop=stop, low_memory=low_memory, sources=sources(ctx, options), **options)
        except FitStopped as stopped:
            raise saved(stopped, state_path, stop.signum) from None
    inst.save(output, force=force)
    stopped = (inst.meta.validation or {}).get("stopped_at")
    early = f", stopped early at step {stopped} (--patience)" if stopped else ""
    click.echo(f"wrote {output} ({inst.method}, init text {inst.meta.init_text!r}, "
               f"loss {inst.meta.final_loss}, {inst.meta.fit_seconds:.1f} s{early})", err=quiet or as_json)
    if as_json:
        click.echo(json_text(fit_report(output, inst.method, inst.meta), indent=2))


def _steps(model: str, method: str, options: dict) -> int:
    """The number of steps the fit will run (the model's own default when not given)."""
    from invert.api import model_defaults
    from invert.methods import settings_for

    return settings_for(method, {**model_defaults(model, method, options), **options})[0].steps


def fit_report(output: Path, method: str, meta: Metadata) -> dict:
    """What ``fit --json`` prints: the fit's outcome and how it checked itself."""
    return {"output": str(output), "method": method, "init_text": meta.init_text, "init_scores": meta.init_scores,
            "steps": meta.steps, "final_loss": meta.final_loss, "fit_seconds": meta.fit_seconds,
            "kept_step": meta.kept_step, "validation": meta.validation, "fit_check": meta.fit_check,
            "cost": meta.cost}
