"""``invert fit-batch``: one instruction per exemplar set, resumable and shardable."""
from __future__ import annotations

import os
import time
from pathlib import Path

import click

import invert
from invert.defaults import DEFAULT_MODEL
from invert.display import printable
from invert.errors import InvertError
from invert.settings.fields import flag
from invert.writing import make_folder, output_exists

from .common import announce_stop, json_text, process_device, quiet_option, user_errors
from .fit import CLIP_MODEL_HELP
from .numbers import number_option
from .options import (config_option, fit_low_memory_option, fit_settings_options, given_settings, method_option,
                      model_options, pop_settings, sources)
from .signals import stop_on_signals


@click.command("fit-batch")
@click.argument("sets", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Folder for SET.inst files.")
@method_option
@fit_settings_options
@click.option("--clip-model", default=None, help=CLIP_MODEL_HELP)
@number_option("--save-every", kind=int, minimum=0, default=0,
              help="Write OUTPUT/SET.step-N.inst every N steps.")
@click.option("--shard", default=None, help="K/N: fit every N-th set starting at K. Default: from RANK and "
              "WORLD_SIZE under torchrun or accelerate launch, else all.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
@quiet_option
@click.option("--force", is_flag=True, help="Refit sets whose SET.inst was fitted with other settings.")
@fit_low_memory_option
@model_options(DEFAULT_MODEL)
@config_option
@click.pass_context
@user_errors
def fit_batch(ctx, sets, output, method, clip_model, save_every, shard, as_json, quiet, force, low_memory, model,
              device, dtype, **values):
    """Fit one instruction per subfolder of SETS (each a pairs folder, or holding one in train/) into OUTPUT,
    with every option of 'invert fit'.

    A set whose OUTPUT/SET.inst was fitted with the same method and settings is skipped, so a re-run continues
    where a stopped one ended; one fitted otherwise is refused, naming what differs, unless --force refits it.
    Ctrl-C or SIGTERM stops the batch after the current step, saving that set's state to OUTPUT/SET.inst.ckpt,
    which a re-run continues (--force: from the start).

    \b
      invert fit-batch examples/toy -o insts/ --model toy --method brush --steps 100
      invert fit-batch sets/ -o insts/ --shard 1/4          # the second of 4 independent workers
      torchrun --nproc-per-node 2 -m invert.cli fit-batch sets/ -o insts/   # one shard per GPU
    """
    from tqdm import tqdm

    from invert.api import model_defaults
    from invert.backbones import load_editor
    from invert.clip import clip_name_for, load_clip
    from invert.methods import settings_for

    from invert.pairs import exemplar_sets

    from .batch import fitted_otherwise, parse_shard

    options = given_settings(ctx, pop_settings(values))
    # a bad option is refused before any set; the model's own defaults count, as invert.fit will use them
    given = sources(ctx, options)
    settings = settings_for(method, {**model_defaults(model, method, options), **options},
                            lambda name: given.get(name) or flag(name))
    k, n = parse_shard(shard, dict(os.environ))
    if n > 1:
        device = process_device(device)  # each process its own GPU
    mine = exemplar_sets(sets)[k::n]
    make_folder(output)
    todo, rows = [], []
    for name, folder in mine:
        path = output / f"{name}.inst"
        try:  # a set whose output the file system cannot hold (a name past its limit) fails alone, before its fit
            there = output_exists(path)
        except InvertError as exc:
            rows.append({"set": name, "status": f"failed: {exc}"})
            continue
        differs = fitted_otherwise(path, method, *settings) if there else None
        if differs and not force:
            raise InvertError(f"{path}: fitted with other settings ({differs}); use --force to refit it, or another "
                              "output folder")
        if there and not differs:
            rows.append({"set": name, "status": "exists"})
        else:
            todo.append((name, folder))
    editor = load_editor(model, device, dtype) if todo else None
    clip = load_clip(clip_name_for(clip_model, editor.model_id), editor.device) if todo else None
    with stop_on_signals(announce_stop) as stop:
        for name, folder in tqdm(todo, desc=f"fit-batch {k}/{n}", disable=as_json or quiet or not todo):
            if stop():  # asked between two sets: the next is not begun
                rows.append({"set": name, "status": "stopped: not begun; a re-run fits it"})
                continue
            rows.append(_fit_set(name, folder, output, method, editor, clip, low_memory, save_every, force, stop,
                                 given, options))
    rows.sort(key=lambda r: r["set"])
    failed = [r for r in rows if r["status"].startswith("failed")]
    # Fitted, but the fit's own check found it worse than its start or than no edit, or its loss misbehaved.
    suspect = [r for r in rows if r.get("fit_check")]
    if as_json:
        click.echo(json_text({"shard": f"{k}/{n}", "output": str(output), "sets": rows}, indent=2))
    else:
        click.echo(f"{'set':24s} {'status':8s} {'method':7s} {'steps':>6s} {'final loss':>11s} {'seconds':>8s}")
        for r in rows:  # a set's name is its folder's: control characters in it are shown escaped
            loss = "" if r.get("final_loss") is None else f"{r['final_loss']:.5f}"
            click.echo(f"{printable(r['set'])[:24]:24s} {r['status'][:8]:8s} {r.get('method', ''):7s} "
                       f"{r.get('steps', ''):>6} {loss:>11s} {r.get('seconds', ''):>8}")
        for r in rows:
            if r["status"].startswith(("failed", "stopped")):
                click.echo(f"{printable(r['set'])}: {r['status']}", err=True)
        if suspect:
            click.echo(f"{len(suspect)} of {len(rows)} sets did not pass the fit check:", err=True)
            for r in suspect:
                click.echo(f"  {printable(r['set'])}: {printable(r['fit_check'])}", err=True)
    if stop.signum is not None:
        raise SystemExit(128 + stop.signum)
    if failed:
        raise SystemExit(1)


def _fit_set(name, folder, output, method, editor, clip, low_memory, save_every, force, stop, given, options) -> dict:
    """Fit one set into OUTPUT/NAME.inst: its summary row. A set stopped by a signal (or by divergence) leaves its
    state in OUTPUT/NAME.inst.ckpt, which a re-run (without --force) continues from."""
    from invert.fitting.checkpoint import FitStopped

    start = time.perf_counter()
    state_path = output / f"{name}.inst.ckpt"

    def checkpoint(inst, step):
        inst.save(output / f"{name}.step-{step}.inst", force=True)

    try:  # one bad set, or one that cannot be written, does not end the batch
        inst = invert.fit(folder, method, editor=editor, clip=clip, quiet=True, low_memory=low_memory,
                          save_every=save_every, checkpoint=checkpoint, sources=given, should_stop=stop,
                          resume=state_path if state_path.is_file() and not force else None, **options)
        inst.save(output / f"{name}.inst", force=True)
    except FitStopped as stopped:
        try:
            stopped.state.save(state_path)
        except InvertError as exc:
            return {"set": name, "status": f"{_stopped(stop)}: {stopped}; its state could not be saved: {exc}"}
        return {"set": name, "status": f"{_stopped(stop)}: {stopped}; saved the state to {state_path}: a re-run "
                                       "continues it"}
    except InvertError as exc:  # its inputs, or an output that cannot be written; or a state of another fit
        hint = " (--force fits it from the start)" if str(exc).startswith(str(state_path)) else ""
        return {"set": name, "status": f"failed: {exc}{hint}"}
    return {"set": name, "status": "fitted", "method": method, "steps": inst.meta.steps,
            "final_loss": inst.meta.final_loss, "seconds": round(time.perf_counter() - start, 2),
            "fit_check": inst.meta.fit_check}


def _stopped(stop) -> str:
    """A set's status when its fit stopped: by a signal, or failed (diverged)."""
    return "failed" if stop.signum is None else "stopped"
