"""``invert fit-batch``: one instruction per exemplar set, resumable and shardable."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import click
from tqdm import tqdm

import invert
from invert.defaults import DEFAULT_MODEL
from invert.errors import InvertError

from .main import model_options, user_errors


@click.command("fit-batch")
@click.argument("sets", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Folder for SET.inst files.")
@click.option("--method", default="visii", show_default=True, type=click.Choice(["visii", "brush", "lora"]))
@click.option("--steps", default=1000, show_default=True, type=click.IntRange(min=0))
@click.option("--lr", default=1e-3, show_default=True, type=float)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--resolution", default=None, type=click.IntRange(min=8), help="Default: the model's own.")
@click.option("--guidance", default=7.5, show_default=True, type=float)
@click.option("--image-guidance", default=1.5, show_default=True, type=float)
@click.option("--shard", default=None, help="K/N: fit every N-th set starting at K. Default: from RANK and "
              "WORLD_SIZE under torchrun or accelerate launch, else all.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
@model_options(DEFAULT_MODEL)
@user_errors
def fit_batch(sets, output, method, steps, lr, seed, resolution, guidance, image_guidance, shard, as_json, model,
              device, dtype):
    """Fit one instruction per subfolder of SETS (each a pairs folder, or holding one in train/) into OUTPUT.

    Sets whose OUTPUT/SET.inst exists are skipped, so a re-run continues where a stopped one ended.

    \b
      invert fit-batch examples/toy -o insts/ --model toy --method brush --steps 100
      invert fit-batch sets/ -o insts/ --shard 1/4          # the second of 4 independent workers
      torchrun --nproc-per-node 2 -m invert.cli fit-batch sets/ -o insts/   # one shard per GPU
    """
    from invert.batch import exemplar_sets, parse_shard
    from invert.clip import clip_name_for, load_clip
    from invert.editor import load_editor

    k, n = parse_shard(shard, dict(os.environ))
    if device == "auto" and n > 1 and "LOCAL_RANK" in os.environ:
        import torch

        if torch.cuda.is_available():  # each process its own GPU
            device = f"cuda:{int(os.environ['LOCAL_RANK']) % torch.cuda.device_count()}"
    mine = exemplar_sets(sets)[k::n]
    output.mkdir(parents=True, exist_ok=True)
    todo, rows = [], []
    for name, folder in mine:
        if (output / f"{name}.inst").exists():
            rows.append({"set": name, "status": "exists"})
        else:
            todo.append((name, folder))
    editor = load_editor(model, device, dtype) if todo else None
    clip = load_clip(clip_name_for(None, editor.model_id), editor.device) if todo else None
    for name, folder in tqdm(todo, desc=f"fit-batch {k}/{n}", disable=as_json or not todo):
        start = time.perf_counter()
        try:
            inst = invert.fit(folder, method, editor=editor, clip=clip, quiet=True, steps=steps, lr=lr, seed=seed,
                              resolution=resolution, guidance=guidance, image_guidance=image_guidance)
        except InvertError as exc:  # one bad set does not end the batch
            rows.append({"set": name, "status": f"failed: {exc}"})
            continue
        inst.save(output / f"{name}.inst")
        rows.append({"set": name, "status": "fitted", "method": method, "steps": steps,
                     "final_loss": float(inst.meta["final_loss"]) if inst.meta.get("final_loss") else None,
                     "seconds": round(time.perf_counter() - start, 2)})
    rows.sort(key=lambda r: r["set"])
    failed = [r for r in rows if r["status"].startswith("failed")]
    if as_json:
        click.echo(json.dumps({"shard": f"{k}/{n}", "output": str(output), "sets": rows}, indent=2))
    else:
        click.echo(f"{'set':24s} {'status':8s} {'method':7s} {'steps':>6s} {'final loss':>11s} {'seconds':>8s}")
        for r in rows:
            loss = "" if r.get("final_loss") is None else f"{r['final_loss']:.5f}"
            click.echo(f"{r['set'][:24]:24s} {r['status'][:8]:8s} {r.get('method', ''):7s} {r.get('steps', ''):>6} "
                       f"{loss:>11s} {r.get('seconds', ''):>8}")
        for r in failed:
            click.echo(f"{r['set']}: {r['status']}", err=True)
    if failed:
        raise SystemExit(1)
