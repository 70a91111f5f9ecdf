"""PEZ init text against invert's 3-phrase caption and random prompts, on the toy world: the CLIP similarity of
each prompt to the after images (CLIP's own text path on the prompt as text, as VISII then encodes it), how
many tokens the IP2P tokenizer makes of it, and the seconds it took.

    python -m benchmarks.pez_init --steps 300 --steps 3000 --json pez_init.json

Reference row "true captions": every after image against its own caption from the toy world (a caption per
image, not one shared prompt), the kind of text the toy CLIP was trained on.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from PIL import Image

from invert.backbones.model_info import TOY_MODEL
from invert.backbones.tokenizer import clip_tokenizer
from invert.clip import Clip, clip_name_for, load_clip
from invert.fitting.pez import PEZ_TOKENS, pez_prompt, text_tower
from invert.fitting.phrases import caption
from invert.toy import world
from invert.vocab import load_vocab, model_vocab

EDITS = ("night", "circle_red", "sepia_frame", "hue90")  # the edits of examples/toy
SEED = 4_000_000  # scenes apart from the toy model's training scenes (below 10**6) and the examples'
RANDOM_PROMPTS = 20


def similarity(clip: Clip, texts: list[str], images: list[Image.Image]) -> torch.Tensor:
    """(texts, images) cosine of CLIP text and image features."""
    img = torch.nn.functional.normalize(clip.image_features(images), dim=-1)
    return torch.nn.functional.normalize(clip.text_features(texts), dim=-1) @ img.T


def random_prompts(clip: Clip, count: int, tokens: int, seed: int) -> list[str]:
    """``count`` prompts of ``tokens`` vocabulary tokens drawn uniformly (no special tokens), decoded."""
    tower = text_tower(clip)
    gen = torch.Generator().manual_seed(seed)
    vocab = len(tower.embedding.weight)
    allowed = torch.tensor([i for i in range(vocab) if i not in (tower.bos, tower.eos)])
    return [tower.decode(allowed[torch.randint(len(allowed), (tokens,), generator=gen)].tolist())
            for _ in range(count)]


def measure(clip: Clip, edits: tuple[str, ...], n: int, steps: list[int], seed: int = 0) -> list[dict]:
    tokenizer = clip_tokenizer()
    phrases = load_vocab(model_vocab(TOY_MODEL))
    rows = []
    for index, name in enumerate(edits):
        edit = world.get_edit(name)
        rng = np.random.default_rng(SEED + index)
        scenes = [world.scene_for(edit, rng) for _ in range(n)]
        afters = [world.apply_edit(edit, s)[1] for s in scenes]
        truths = [world.describe_after(edit, s) for s in scenes]
        row: dict = {"edit": name, "pairs": n,
                     "true_captions": float(similarity(clip, truths, afters).diagonal().mean())}
        rand = similarity(clip, random_prompts(clip, RANDOM_PROMPTS, PEZ_TOKENS, seed), afters).mean(1)
        row.update(random_mean=float(rand.mean()), random_max=float(rand.max()))
        start = time.perf_counter()
        text = caption(clip, afters, phrases)
        row.update(caption=text, caption_similarity=float(similarity(clip, [text], afters).mean()),
                   caption_seconds=time.perf_counter() - start)
        for count in steps:
            start = time.perf_counter()
            prompt = pez_prompt(clip, afters, steps=count, seed=seed)
            row[f"pez{count}_seconds"] = time.perf_counter() - start
            row[f"pez{count}"] = prompt
            row[f"pez{count}_similarity"] = float(similarity(clip, [prompt], afters).mean())
            row[f"pez{count}_ip2p_tokens"] = len(tokenizer(prompt).input_ids) - 2
        rows.append(row)
        print(json.dumps(row))
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--edit", action="append", default=None, help=f"default: {', '.join(EDITS)}")
    ap.add_argument("--pairs", type=int, default=10)
    ap.add_argument("--steps", type=int, action="append", default=None, help="PEZ steps (repeatable)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    clip = load_clip(clip_name_for(None, TOY_MODEL))
    rows = measure(clip, tuple(args.edit or EDITS), args.pairs, args.steps or [3000], args.seed)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
