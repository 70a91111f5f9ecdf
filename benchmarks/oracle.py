"""Sanity check of a toy model: does IP2P with the true instruction reproduce the world's exact edits?

    python -m benchmarks.oracle invert/toy/model --n 10 --guidance 7.5:1.5 --guidance 3:1.5

For every catalogue edit, on held-out scenes: PSNR to the true after image of (a) the unedited input,
(b) the true after image through the VAE (the ceiling any sampling can reach) and (c) the pipeline's output with
the true instruction (Euler ancestral, 20 steps) at each guidance setting. The project's targets: the oracle
beats no-edit by at least 6 dB averaged over the global edits and 3 dB over the local ones.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from invert.evaluation import as_tensor, psnr
from invert.toy import world

HELD_OUT_SEED = 10**6  # training pairs use seeds below 10**6 (train.training_seed)
TARGETS = {"global": 6.0, "local": 3.0}


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(psnr(a, b).mean())


@torch.no_grad()
def _vae_roundtrip(vae, images: torch.Tensor) -> torch.Tensor:
    out = vae.decode(vae.encode(images * 2 - 1).latent_dist.mode()).sample
    return (out.clamp(-1, 1) + 1) / 2


def _setting(guidance: tuple[float, float]) -> str:
    return f"{guidance[0]:g}/{guidance[1]:g}"


def evaluate_oracle(model_dir: str | Path, n: int = 10, seed: int = HELD_OUT_SEED,
                    guidances: tuple[tuple[float, float], ...] = ((7.5, 1.5),), steps: int = 20,
                    edits: list[str] | None = None) -> dict:
    """PSNR table (see the module doc); ``guidances`` are (text, image) guidance scales."""
    from diffusers import StableDiffusionInstructPix2PixPipeline

    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(str(model_dir), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    names = edits or list(world.EDITS)
    rows = {}
    for index, name in enumerate(names):
        edit = world.get_edit(name)
        pairs = world.make_pairs(name, n, seed + index, size)
        befores, afters = [b for b, _ in pairs], as_tensor([a for _, a in pairs])
        row = {"kind": edit.kind, "no_edit": _psnr(as_tensor(befores), afters),
               "vae": _psnr(_vae_roundtrip(pipe.vae, afters), afters), "oracle": {}}
        for guidance in guidances:
            out = pipe([edit.instruction] * n, image=befores, num_inference_steps=steps, guidance_scale=guidance[0],
                       image_guidance_scale=guidance[1], generator=torch.Generator().manual_seed(seed),
                       output_type="pt").images
            row["oracle"][_setting(guidance)] = _psnr(out, afters)
        rows[name] = row
    return {"n": n, "seed": seed, "steps": steps, "settings": [_setting(g) for g in guidances], "rows": rows,
            "means": _means(rows, [_setting(g) for g in guidances])}


@torch.no_grad()
def evaluate_clip(model_dir: str | Path, n: int = 10, seed: int = HELD_OUT_SEED) -> dict:
    """Does the toy CLIP know the looks of the global edits? Top-1 accuracy, over the catalogue's style phrases,
    of (a) each after image and (b) each edit's direction (mean after - mean before image feature, the quantity
    VISII's CLIP loss aligns with its instruction)."""
    from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

    model_dir = Path(model_dir)
    model = CLIPModel.from_pretrained(model_dir / "clip", dtype=torch.float32).eval()
    processor = CLIPImageProcessor.from_pretrained(model_dir / "clip")
    tokenizer = CLIPTokenizer.from_pretrained(model_dir / "tokenizer")
    size = model.config.vision_config.image_size
    edits = [e for e in world.EDITS.values() if e.kind == "global"]
    text = model.get_text_features(**tokenizer([e.style for e in edits], padding=True, return_tensors="pt"))
    text = torch.nn.functional.normalize(text.pooler_output, dim=-1)

    def features(images) -> torch.Tensor:
        out = model.get_image_features(**processor(images=images, return_tensors="pt")).pooler_output
        return torch.nn.functional.normalize(out, dim=-1)

    image_hits, direction_hits = 0, 0
    for index, edit in enumerate(edits):
        pairs = world.make_pairs(edit.name, n, seed + index, size)
        before, after = features([b for b, _ in pairs]), features([a for _, a in pairs])
        image_hits += int(((after @ text.T).argmax(1) == index).sum())
        direction = torch.nn.functional.normalize(after.mean(0) - before.mean(0), dim=-1)
        direction_hits += int((direction @ text.T).argmax() == index)
    return {"style_top1_image": image_hits / (n * len(edits)), "style_top1_direction": direction_hits / len(edits),
            "styles": len(edits)}


def _means(rows: dict, settings: list[str]) -> dict:
    means = {}
    for kind in ("global", "local"):
        group = [r for r in rows.values() if r["kind"] == kind]
        if not group:
            continue
        entry = {"no_edit": float(np.mean([r["no_edit"] for r in group])),
                 "vae": float(np.mean([r["vae"] for r in group])),
                 "oracle": {s: float(np.mean([r["oracle"][s] for r in group])) for s in settings}}
        entry["gain"] = {s: entry["oracle"][s] - entry["no_edit"] for s in settings}
        entry["target_gain"] = TARGETS[kind]
        means[kind] = entry
    return means


def format_table(result: dict) -> str:
    """A plain-text table: one row per edit, then the global and local means and their gains."""
    settings = result["settings"]
    head = f"{'edit':22s} {'kind':6s} {'no-edit':>8s} {'vae':>6s} " + " ".join(f"{'o ' + s:>10s}" for s in settings)
    lines = [head, "-" * len(head)]
    for name, r in result["rows"].items():
        lines.append(f"{name:22s} {r['kind']:6s} {r['no_edit']:8.2f} {r['vae']:6.2f} " +
                     " ".join(f"{r['oracle'][s]:10.2f}" for s in settings))
    lines.append("-" * len(head))
    for kind, m in result["means"].items():
        lines.append(f"{'mean ' + kind:22s} {'':6s} {m['no_edit']:8.2f} {m['vae']:6.2f} " +
                     " ".join(f"{m['oracle'][s]:10.2f}" for s in settings))
        lines.append(f"{'  gain (target ' + format(m['target_gain'], 'g') + ')':22s} {'':6s} {'':8s} {'':6s} " +
                     " ".join(f"{m['gain'][s]:+10.2f}" for s in settings))
    return "\n".join(lines)


def _guidance(text: str) -> tuple[float, float]:
    text_scale, image_scale = text.split(":")
    return float(text_scale), float(image_scale)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.oracle", description=__doc__.split("\n\n")[0])
    p.add_argument("model_dir", type=Path)
    p.add_argument("--n", type=int, default=10, help="held-out pairs per edit")
    p.add_argument("--seed", type=int, default=HELD_OUT_SEED)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=_guidance, action="append", help="TEXT:IMAGE scales (repeatable; 7.5:1.5)")
    p.add_argument("--hard", action="store_true", help="also the held-out hard edits (compositions, strengths)")
    p.add_argument("--clip", action="store_true", help="also check the toy CLIP on the looks of the global edits")
    p.add_argument("--json", type=Path, help="also write the result here")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    edits = list(world.EDITS) + (list(world.HARD_EDITS) if args.hard else [])
    result = evaluate_oracle(args.model_dir, args.n, args.seed, tuple(args.guidance or [(7.5, 1.5)]), args.steps, edits)
    print(format_table(result))
    if args.clip:
        result["clip"] = evaluate_clip(args.model_dir, args.n, args.seed)
        print("clip: " + ", ".join(f"{k} {v:g}" for k, v in result["clip"].items()))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
