"""Sanity check of a toy model: does the editor with the true instruction reproduce the world's exact edits?

    python -m benchmarks.oracle invert/toy/model --n 10 --guidance 7.5:1.5 --guidance 3:1.5
    python -m benchmarks.oracle invert/toy/dit --n 10 --guidance 1 --guidance 2 --guidance 4 --hard

For every catalogue edit, on held-out scenes: PSNR to the true after image of (a) the unedited input,
(b) the true after image through the VAE (the ceiling any sampling can reach) and (c) the editor's output with
the true instruction (20 steps) at each guidance setting. The model folder's pipeline class picks the editor:
InstructPix2Pix (Euler ancestral; guidance TEXT:IMAGE) or FLUX.2 [klein] (flow-matching Euler, real CFG against
the empty prompt; guidance one scale; benchmarks/klein_loop.py). The project's targets: the oracle beats
no-edit by at least 6 dB averaged over the global edits and 3 dB over the local ones. The held-out hard edits
(``--hard``) are averaged apart, as the quality table groups them.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from invert.errors import InvertError, ModelLoadError
from invert.evaluation import as_tensor, psnr
from invert.toy import world

HELD_OUT_SEED = 10**6  # training pairs use seeds below 10**6 (train.training_seed)
TARGETS = {"global": 6.0, "local": 3.0}
GROUPS = ("global", "local", "hard", "hard_new")  # catalogue edits by kind, then the held-out ones


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(psnr(a, b).mean())


@torch.no_grad()
def _vae_roundtrip(vae, images: torch.Tensor) -> torch.Tensor:
    out = vae.decode(vae.encode(images * 2 - 1).latent_dist.mode()).sample
    return (out.clamp(-1, 1) + 1) / 2


def _setting(guidance: tuple[float, ...]) -> str:
    return "/".join(f"{g:g}" for g in guidance)


@dataclass
class OracleEditor:
    """A model folder's editor as the oracle needs it: ``edit(befores, instruction, guidance)`` -> images in
    [0, 1] (each call with the same seed), its VAE, its image size and what a guidance setting is."""

    edit: Callable[[list, str, tuple[float, ...]], torch.Tensor]
    vae: Any
    size: int
    default_guidance: tuple[float, ...]
    guidance_help: str  # what --guidance takes, for the error on another form

    def check(self, guidance: tuple[float, ...]) -> None:
        if len(guidance) != len(self.default_guidance):
            raise InvertError(f"--guidance {_setting(guidance)}: {self.guidance_help}")


def _ip2p_editor(model_dir: str | Path, steps: int, seed: int) -> OracleEditor:
    from diffusers import StableDiffusionInstructPix2PixPipeline

    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(str(model_dir), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)

    def edit(befores: list, instruction: str, guidance: tuple[float, ...]) -> torch.Tensor:
        return pipe([instruction] * len(befores), image=befores, num_inference_steps=steps,
                    guidance_scale=guidance[0], image_guidance_scale=guidance[1],
                    generator=torch.Generator().manual_seed(seed), output_type="pt").images

    return OracleEditor(edit, pipe.vae, pipe.unet.config.sample_size * pipe.vae_scale_factor, (7.5, 1.5),
                        "InstructPix2Pix takes TEXT:IMAGE scales, e.g. 7.5:1.5")


def _klein_editor(model_dir: str | Path, steps: int, seed: int) -> OracleEditor:
    from diffusers import Flux2KleinPipeline

    from .klein_loop import call_settings, sample

    pipe = Flux2KleinPipeline.from_pretrained(str(model_dir), dtype=torch.float32)
    text = call_settings(model_dir)

    def edit(befores: list, instruction: str, guidance: tuple[float, ...]) -> torch.Tensor:
        return sample(pipe, befores, [instruction] * len(befores), guidance[0], steps,
                      torch.Generator().manual_seed(seed), text)

    return OracleEditor(edit, pipe.vae, pipe.vae.config.sample_size, (4.0,),
                        "FLUX.2 [klein] takes one guidance scale, e.g. 4")


EDITORS = {"StableDiffusionInstructPix2PixPipeline": _ip2p_editor, "Flux2KleinPipeline": _klein_editor}


def oracle_editor(model_dir: str | Path, steps: int = 20, seed: int = HELD_OUT_SEED) -> OracleEditor:
    """The editor of the folder's pipeline class (its ``model_index.json``)."""
    class_name = json.loads((Path(model_dir) / "model_index.json").read_text())["_class_name"]
    if class_name not in EDITORS:
        raise ModelLoadError(f"{model_dir}: the oracle knows {', '.join(EDITORS)}, not {class_name}")
    return EDITORS[class_name](model_dir, steps, seed)


def evaluate_oracle(model_dir: str | Path, n: int = 10, seed: int = HELD_OUT_SEED,
                    guidances: tuple[tuple[float, ...], ...] | None = None, steps: int = 20,
                    edits: list[str] | None = None) -> dict:
    """PSNR table (see the module doc); ``guidances``: (text, image) scales for IP2P, (scale,) for klein."""
    from .quality import group_of

    editor = oracle_editor(model_dir, steps, seed)
    guidances = guidances or (editor.default_guidance,)
    for guidance in guidances:
        editor.check(guidance)
    names = edits or list(world.EDITS)
    rows = {}
    for index, name in enumerate(names):
        edit = world.get_edit(name)
        pairs = world.make_pairs(name, n, seed + index, editor.size)
        befores, afters = [b for b, _ in pairs], as_tensor([a for _, a in pairs])
        row = {"kind": edit.kind, "group": group_of(name), "no_edit": _psnr(as_tensor(befores), afters),
               "vae": _psnr(_vae_roundtrip(editor.vae, afters), afters), "oracle": {}}
        for guidance in guidances:
            row["oracle"][_setting(guidance)] = _psnr(editor.edit(befores, edit.instruction, guidance), afters)
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
    for kind in GROUPS:
        group = [r for r in rows.values() if r["group"] == kind]
        if not group:
            continue
        entry = {"no_edit": float(np.mean([r["no_edit"] for r in group])),
                 "vae": float(np.mean([r["vae"] for r in group])),
                 "oracle": {s: float(np.mean([r["oracle"][s] for r in group])) for s in settings}}
        entry["gain"] = {s: entry["oracle"][s] - entry["no_edit"] for s in settings}
        if kind in TARGETS:
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
        target = f" (target {m['target_gain']:g})" if "target_gain" in m else ""
        lines.append(f"{'  gain' + target:22s} {'':6s} {'':8s} {'':6s} " +
                     " ".join(f"{m['gain'][s]:+10.2f}" for s in settings))
    return "\n".join(lines)


def _guidance(text: str) -> tuple[float, ...]:
    return tuple(float(scale) for scale in text.split(":"))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.oracle", description=__doc__.split("\n\n")[0])
    p.add_argument("model_dir", type=Path)
    p.add_argument("--n", type=int, default=10, help="held-out pairs per edit")
    p.add_argument("--seed", type=int, default=HELD_OUT_SEED)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=_guidance, action="append",
                   help="TEXT:IMAGE scales for IP2P (default 7.5:1.5), one scale for klein (default 4); repeatable")
    p.add_argument("--hard", action="store_true", help="also the held-out hard edits (compositions, strengths)")
    p.add_argument("--clip", action="store_true", help="also check the toy CLIP on the looks of the global edits")
    p.add_argument("--json", type=Path, help="also write the result here")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    edits = list(world.EDITS) + (list(world.HARD_EDITS) if args.hard else [])
    try:
        result = evaluate_oracle(args.model_dir, args.n, args.seed, tuple(args.guidance or ()), args.steps, edits)
    except InvertError as error:
        p.error(str(error))
    print(format_table(result))
    if args.clip:
        result["clip"] = evaluate_clip(args.model_dir, args.n, args.seed)
        print("clip: " + ", ".join(f"{k} {v:g}" for k, v in result["clip"].items()))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
