"""How a fit's quality grows with its steps, per learning rate and method, on the toy world: the study the fit
defaults are chosen from (issue 17).

Protocol: the quality table's (10 exemplar pairs, guidance 3 / 1.5, 20 sampling steps, seed 0, the fit's own
defaults otherwise: --init best, 2 pairs held out for its validation) but scored on *validation scenes*
(``quality.VALIDATION_SEED``), never on the table's test scenes. One fit per (method, lr, edit) runs to the
largest step count with ``--keep last``; the learning rate is constant and a shorter fit trains the same
timesteps and noises in the same order, so its snapshot at step N is the N-step fit's last state. Step 0 is the
init text. Each snapshot is applied to the validation scenes; PSNR (dB) to the true edits.

    python -m benchmarks.steps_lr --methods visii --lrs 3e-3,1e-2,3e-2 --steps 100,300,1000 --json out.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from invert.api import apply, fit_images, model_defaults
from invert.backbones import load_editor
from invert.clip import clip_name_for, load_clip
from invert.evaluation import as_tensor, psnr
from invert.methods import settings_for

from .quality import VALIDATION_SEED, QualitySettings, edit_pairs

BENCH = QualitySettings()
# One edit of each kind the table reports: global, local, hard, hard new.
STUDY_EDITS = ["sepia", "circle_red", "night_frame", "hue200"]


def study(editor, clip, method: str, lr: float, edits: list[str], checkpoints: list[int], shots: int = 10,
          n_val: int = 5, log=print, guidance: tuple[float, float] = BENCH.guidance,
          loss_target: str | None = None) -> dict:
    """``{edit: {step: psnr}}`` plus each edit's no-edit PSNR, for one method and learning rate (the other
    settings: the model's own, e.g. the toy DiT's VISII without its CLIP term)."""
    size, last = editor.resolution, max(checkpoints)
    out: dict = {}
    for name in edits:
        train, val = edit_pairs(name, shots, n_val, size, test_seed=VALIDATION_SEED)
        befores, truths = [b for b, _ in val], [a for _, a in val]
        snaps = {}

        def keep(inst, step):
            if step in checkpoints:
                snaps[step] = inst
        options = {"steps": last, "lr": lr, "seed": BENCH.seed, "guidance": guidance[0],
                   "image_guidance": guidance[1], "keep": "last", "val_every": 0, "resolution": size,
                   **({"loss_target": loss_target} if loss_target else {})}
        options = {**model_defaults(editor.model_id, method, options), **options}
        start = time.perf_counter()
        final = fit_images(editor, [b for b, _ in train], [a for _, a in train], method,
                           *settings_for(method, options), clip=clip, quiet=True,
                           checkpoint=keep, save_every=min(c for c in checkpoints if c))
        seconds = time.perf_counter() - start
        snaps[last] = final
        # step 0: the init text the fit chose, given as the only candidate (no second search)
        snaps[0] = zero = fit_images(editor, [b for b, _ in train], [a for _, a in train], method,
                                     *settings_for(method, {**options, "steps": 0,
                                                            "init_text": final.meta.init_text}),
                                     clip=clip, quiet=True)
        t = as_tensor(truths)
        row = {str(step): float(psnr(as_tensor(apply(inst, befores, editor=editor, steps=BENCH.apply_steps)), t).mean())
               for step, inst in sorted(snaps.items())}
        row["no_edit"] = float(psnr(as_tensor(befores), t).mean())
        row["init_text"] = zero.meta.init_text
        row["fit_seconds"] = seconds
        out[name] = row
        log(f"{method} lr {lr:g} {name:20s} " + " ".join(f"{k}:{v:.2f}" for k, v in row.items()
                                                        if isinstance(v, float)) + f" init {row['init_text']!r}")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="toy")
    parser.add_argument("--methods", default="visii,brush,lora")
    parser.add_argument("--lrs", default="3e-3,1e-2,3e-2")
    parser.add_argument("--steps", default="100,300,1000", help="the step counts to score (snapshots of one fit)")
    parser.add_argument("--edits", default=",".join(STUDY_EDITS))
    parser.add_argument("--guidance", default="3,1.5", help="text guidance, or text and image guidance (G,IG)")
    parser.add_argument("--loss-target", choices=["cfg", "cond"], default=None,
                        help="the fit's loss target (default: the model's own, else the library's)")
    parser.add_argument("--json", type=Path, help="write the result here")
    args = parser.parse_args(argv)
    editor = load_editor(args.model, "cpu")
    clip = load_clip(clip_name_for(None, editor.model_id))
    checkpoints = sorted(int(s) for s in args.steps.split(","))
    guidance = (*(float(g) for g in args.guidance.split(",")), BENCH.guidance[1])[:2]
    result: dict = {"steps": checkpoints, "edits": args.edits.split(","), "runs": {}}
    for method in args.methods.split(","):
        for lr in (float(x) for x in args.lrs.split(",")):
            result["runs"][f"{method} {lr:g}"] = study(editor, clip, method, lr, result["edits"], checkpoints,
                                                         guidance=guidance, loss_target=args.loss_target)
            if args.json:
                args.json.write_text(json.dumps(result, indent=1))
    for key, rows in result["runs"].items():
        means = {s: sum(r[s] for r in rows.values()) / len(rows) for s in ["0", *map(str, checkpoints), "no_edit"]}
        print(key, " ".join(f"{s}:{v:.2f}" for s, v in means.items()))


if __name__ == "__main__":
    main()
