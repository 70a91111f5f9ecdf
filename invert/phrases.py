"""Rank vocabulary phrases against images with CLIP: captions for VISII's initial text, and (InstructBrush)
the phrases whose similarity changes most from the before to the after images."""
from __future__ import annotations

import hashlib

import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from .cache import cache_dir
from .clip import Clip
from .editor import fingerprint


def phrase_features(clip: Clip, phrases: list[str], chunk: int = 256, quiet: bool = True) -> torch.Tensor:
    """Normalized CLIP text features of ``phrases``, cached on disk by CLIP weights and phrase list."""
    model = getattr(clip, "model", None)
    key = hashlib.sha256((clip.name + (fingerprint(model) if model is not None else "") + "\n".join(phrases))
                         .encode()).hexdigest()[:24]
    path = cache_dir() / "phrase-features" / f"{key}.safetensors"
    if path.exists():
        return load_file(str(path))["features"]
    parts = [clip.text_features(phrases[i:i + chunk])
             for i in tqdm(range(0, len(phrases), chunk), desc="embedding phrases", disable=quiet)]
    feats = torch.nn.functional.normalize(torch.cat(parts).float().cpu(), dim=-1)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({"features": feats}, str(tmp))
    tmp.replace(path)
    return feats


def image_phrase_similarity(clip: Clip, images: list[Image.Image], phrase_feats: torch.Tensor) -> torch.Tensor:
    """Cosine similarity (n_images, n_phrases)."""
    img = torch.nn.functional.normalize(clip.image_features(images).float().cpu(), dim=-1)
    return img @ phrase_feats.T


def caption(clip: Clip, images: list[Image.Image], phrases: list[str], count: int = 3) -> str:
    """The ``count`` phrases most similar on average to ``images``, joined by commas (a CLIP-ranked caption)."""
    sims = image_phrase_similarity(clip, images, phrase_features(clip, phrases)).mean(0)
    return ", ".join(phrases[i] for i in sims.topk(min(count, len(phrases))).indices.tolist())
