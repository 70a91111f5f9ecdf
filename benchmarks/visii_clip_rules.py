"""How much the official VISII run's gradient clipping and optimizer change a fit, measured with the reference
loop (benchmarks/visii_official.py) on any model:

- the fraction of the learned entries' gradient that each clip rule changes, per step;
- where each run ends: its training loss, the guided MSE of its final and "best" embeddings on a fixed
  evaluation set (every pair at evenly spaced timesteps with noises of their own), and how far its learned
  tokens moved compared with a reference run (invert's rule, "abs").

All runs share the init text, timestep order, noises and pairs, so they differ only in the rule and optimizer.

    python -m benchmarks.visii_clip_rules --model toy --pairs examples/toy/night/train \\
        --eval-pairs examples/toy/night/test --steps 200 --lr 1e-3 --lr 1e-2 --json clip_rules.json
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import time
from dataclasses import asdict

import torch
from PIL import Image

from invert.backbones import Editor, load_editor
from invert.clip import Clip, clip_name_for, load_clip
from invert.fitting.loop import FitData, Trainer
from invert.fitting.losses import clip_direction
from invert.fitting.phrases import caption
from invert.methods.visii import Visii
from invert.pairs import find_pairs, load_pairs
from invert.settings import FitSettings
from invert.vocab import load_vocab, model_vocab

from .visii_official import OfficialOptions, OfficialResult, OfficialVisii

REFERENCE = ("abs", "adamw")  # invert's current rule and optimizer: the run the others are compared with
EVAL_SEED_OFFSET = 10_000  # evaluation noises come from seed + this, never the training draws


def configs() -> list[tuple[str, str]]:
    """(grad_clip, optimizer) pairs to run: the official run, each official part alone, invert's, no clipping."""
    runs = [("official", "adamw"), REFERENCE, ("none", "adamw")]
    if importlib.util.find_spec("bitsandbytes") is not None:
        runs = [("official", "adamw8bit"), ("none", "adamw8bit"), *runs]
    return runs


@torch.no_grad()
def eval_mse(run: OfficialVisii, row: torch.Tensor, cond: torch.Tensor, target: torch.Tensor, count: int,
             seed: int) -> float:
    """Mean guided MSE of prompt row ``row`` over every pair at ``count`` evenly spaced timesteps, each pair and
    timestep with its own noise drawn from ``seed``."""
    steps = len(run.sigmas)
    gen = torch.Generator("cpu").manual_seed(seed)
    noises = torch.randn((count, *target.shape), generator=gen).to(target.device)
    embeds = torch.cat([row.to(run.orig), run.orig[1:]])
    total = 0.0
    for i in range(count):
        t = int((i + 0.5) * steps / count)
        pred = run.guided_prediction(embeds, cond.float(), target.float(), t, noises[i])
        total += float(torch.nn.functional.mse_loss(pred, noises[i]))
    return total / count


def _moved(result: OfficialResult, init: torch.Tensor) -> torch.Tensor:
    return (result.learned() - init[:, 1:result.eos]).flatten()


def summarize(result: OfficialResult, seconds: float) -> dict:
    n = len(result.records)
    tail = max(1, n // 4)
    clipped = torch.tensor(result.clipped)
    return {
        "seconds": round(seconds, 2),
        "clipped_mean": float(clipped.mean()),
        "clipped_first10": float(clipped[:10].mean()),
        "clipped_last_quarter": float(clipped[-tail:].mean()),
        "clipped_all_mean": sum(r.clipped_all for r in result.records) / n,
        "steps_with_any_clip": sum(r.clipped > 0 for r in result.records),
        "grad_max_median": float(torch.tensor([r.grad_max for r in result.records]).median()),
        "loss_last_quarter": sum(result.losses[-tail:]) / tail,
        "best_step": result.best_step,
        "best_timestep": None if result.best_step is None else result.records[result.best_step].timestep,
    }


def measure(editor: Editor, clip: Clip, befores: list[Image.Image], afters: list[Image.Image], *, steps: int,
            lrs: list[float], seed: int = 0, init_text: str | None = None, vocab: list[str] | None = None,
            eval_pairs: tuple[list[Image.Image], list[Image.Image]] | None = None, eval_timesteps: int = 50,
            runs: list[tuple[str, str]] | None = None) -> dict:
    """Run every (grad_clip, optimizer) of ``runs`` at every learning rate; one dict of settings and results."""
    if init_text is None:
        init_text = caption(clip, afters, vocab or [])
    init = editor.encode_text([init_text])
    fitter = Trainer(Visii.initialize(editor, init, init_text), FitData(editor, befores, afters, seed),
                     FitSettings(steps=steps, seed=seed, init_text=init_text, resolution=befores[0].width))
    order = fitter.schedule[:, 0]
    data = fitter.data
    direction = clip_direction(clip, befores, afters)
    sets = {"train": (data.cond, data.target)}
    if eval_pairs is not None:
        sets["test"] = (editor.condition(eval_pairs[0]), editor.target(eval_pairs[1]))
    out = {"init_text": init_text, "eos": init.eos[0], "pairs": len(befores), "steps": steps, "seed": seed,
           "clip_values": {}, "runs": []}
    for lr in lrs:
        finals: dict[tuple[str, str], OfficialResult] = {}
        for grad_clip, optimizer in runs or configs():
            options = OfficialOptions(lr=lr, grad_clip=grad_clip, optimizer=optimizer)
            start = time.perf_counter()
            run = OfficialVisii(editor.unet, editor.scheduler.config, init.embeds, init.eos[0], data.uncond.embeds,
                                data.cond, data.target, order, data.noises, clip.project_text, direction, options)
            result = run.run()
            row = {"lr": lr, "grad_clip": grad_clip, "optimizer": optimizer,
                   **summarize(result, time.perf_counter() - start)}
            out["clip_values"][grad_clip] = run.clip_value
            for name, (cond, target) in sets.items():
                row[f"eval_{name}_init"] = eval_mse(run, init.embeds, cond, target, eval_timesteps,
                                                    seed + EVAL_SEED_OFFSET)
                row[f"eval_{name}_final"] = eval_mse(run, result.final, cond, target, eval_timesteps,
                                                     seed + EVAL_SEED_OFFSET)
                if result.best is not None:
                    row[f"eval_{name}_best"] = eval_mse(run, result.best, cond, target, eval_timesteps,
                                                        seed + EVAL_SEED_OFFSET)
            finals[(grad_clip, optimizer)] = result
            out["runs"].append(row)
        reference = finals.get(REFERENCE)
        if reference is not None:
            ref = _moved(reference, init.embeds)
            for row in out["runs"]:
                if row["lr"] != lr:
                    continue
                moved = _moved(finals[(row["grad_clip"], row["optimizer"])], init.embeds)
                row["moved_rms"] = float(moved.pow(2).mean().sqrt())
                row["moved_vs_reference_rel"] = float((moved - ref).norm() / ref.norm())
                row["moved_cos_reference"] = float(torch.nn.functional.cosine_similarity(moved, ref, dim=0))
    return out


def _table(out: dict) -> str:
    cols = ["lr", "grad_clip", "optimizer", "clipped_mean", "clipped_first10", "clipped_last_quarter",
            "loss_last_quarter", "eval_train_init", "eval_train_final", "eval_train_best", "eval_test_init",
            "eval_test_final", "eval_test_best", "moved_rms",
            "moved_vs_reference_rel", "moved_cos_reference", "best_step", "best_timestep", "seconds"]
    cols = [c for c in cols if any(c in r for r in out["runs"])]
    lines = [" | ".join(cols)]
    for r in out["runs"]:
        lines.append(" | ".join(f"{r[c]:.4g}" if isinstance(r.get(c), float) else str(r.get(c)) for c in cols))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="toy")
    ap.add_argument("--clip-model", default=None, help="default: the model folder's clip/, else ViT-L/14")
    ap.add_argument("--pairs", required=True)
    ap.add_argument("--eval-pairs", default=None)
    ap.add_argument("--max-pairs", type=int, default=None)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--lr", type=float, action="append", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--init-text", default=None, help="default: invert's CLIP caption of the afters")
    ap.add_argument("--eval-timesteps", type=int, default=50)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    editor = load_editor(args.model, "cpu", "fp32")
    clip = load_clip(clip_name_for(args.clip_model, args.model))
    pairs = find_pairs(args.pairs)[:args.max_pairs]
    befores, afters = load_pairs(pairs, editor.resolution)
    eval_pairs = None
    if args.eval_pairs:
        eval_pairs = load_pairs(find_pairs(args.eval_pairs), editor.resolution)
    vocab = None if args.init_text is not None else load_vocab(model_vocab(args.model))
    out = measure(editor, clip, befores, afters, steps=args.steps, lrs=args.lr or [1e-3, 1e-2], seed=args.seed,
                  init_text=args.init_text, vocab=vocab, eval_pairs=eval_pairs, eval_timesteps=args.eval_timesteps)
    out.update(model=args.model, pairs_folder=args.pairs, torch=torch.__version__,
               options=asdict(OfficialOptions()))
    print(f"init text {out['init_text']!r}, clip values {out['clip_values']}")
    print(_table(out))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
