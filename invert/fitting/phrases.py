"""Rank vocabulary phrases against images with CLIP: captions for VISII's initial text, and (InstructBrush)
the phrases whose similarity changes most from the before to the after images."""
from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from ..backbones import fingerprint
from ..cache import cache_dir
from ..clip import Clip
from ..errors import InvertError, InvertWarning
from ..writing import make_folder, write_atomically


def phrase_features(clip: Clip, phrases: list[str], chunk: int = 256, quiet: bool = True) -> torch.Tensor:
    """Normalized CLIP text features of ``phrases``, cached on disk by CLIP weights and phrase list."""
    model = getattr(clip, "model", None)
    # v2: caches written before the toy CLIP got the real tokenizer hold features of <unk> tokens.
    key = hashlib.sha256(("v2" + clip.name + (fingerprint(model) if model is not None else "") + "\n".join(phrases))
                         .encode()).hexdigest()[:24]
    path = cache_dir() / "phrase-features" / f"{key}.safetensors"
    try:
        return load_file(str(path))["features"]
    except (OSError, SafetensorError, KeyError):  # not cached yet, or a damaged cache file: computed again
        pass
    parts = [clip.text_features(phrases[i:i + chunk])
             for i in tqdm(range(0, len(phrases), chunk), desc="embedding phrases", disable=quiet)]
    feats = torch.nn.functional.normalize(torch.cat(parts).float().cpu(), dim=-1)
    try:  # a cache: when it cannot be written (a full disk, a read-only home) the features are computed again
        make_folder(path.parent, path)
        write_atomically(path, lambda tmp: save_file({"features": feats}, tmp), force=True)
    except InvertError as exc:
        warnings.warn(InvertWarning(f"phrase features not cached: {exc}"))
    return feats


def image_phrase_similarity(clip: Clip, images: list[Image.Image], phrase_feats: torch.Tensor) -> torch.Tensor:
    """Cosine similarity (n_images, n_phrases)."""
    img = torch.nn.functional.normalize(clip.image_features(images).float().cpu(), dim=-1)
    return img @ phrase_feats.T


def caption(clip: Clip, images: list[Image.Image], phrases: list[str], count: int = 3) -> str:
    """The ``count`` phrases most similar on average to ``images``, joined by commas (a CLIP-ranked caption)."""
    sims = image_phrase_similarity(clip, images, phrase_features(clip, phrases)).mean(0)
    return ", ".join(phrases[i] for i in sims.topk(min(count, len(phrases))).indices.tolist())


TEMPLATE = "turn {p_x} into {p_y}"
TEMPLATE_AFTER_ONLY = "turn it into {p_y}"
TEMPLATE_BEFORE_ONLY = "remove {p_x}"


@dataclass
class PhraseChoice:
    """The result of transformation-oriented initialization."""

    text: str
    p_x: str | None
    p_y: str | None
    score_x: float | None
    score_y: float | None
    candidates: list[dict]  # {"phrase", "side", "sensitivity", "relative"}, best first per side


def unique_phrases(clip: Clip, befores: list[Image.Image], afters: list[Image.Image], phrases: list[str],
                   top: int = 5, threshold: float = 0.15, relative: bool = False, template: str = TEMPLATE
                   ) -> PhraseChoice:
    """InstructBrush's initialization: p_y, the after-image candidate whose CLIP similarity rises most from the
    before to the after images, and p_x, the before-image candidate that falls most.

    Candidates are the union over each side's images of their ``top`` phrases, ranked by sensitivity (mean
    similarity to the afters minus to the befores). A side is dropped when its |sensitivity| is below
    ``threshold``; with ``relative`` the threshold is in units of the spread (standard deviation) of the
    images' similarities over the vocabulary, since CLIP cosines are small and their scale differs by model."""
    feats = phrase_features(clip, phrases)
    sim_b = image_phrase_similarity(clip, befores, feats)
    sim_a = image_phrase_similarity(clip, afters, feats)
    k = min(top, len(phrases))
    cand_b = sorted(set(sim_b.topk(k, dim=1).indices.flatten().tolist()))
    cand_a = sorted(set(sim_a.topk(k, dim=1).indices.flatten().tolist()))
    mean_b, mean_a = sim_b.mean(0), sim_a.mean(0)
    sens = mean_a - mean_b
    spread = torch.cat([sim_b, sim_a]).std(dim=1).mean().clamp(min=1e-8)
    rel = sens / spread
    score = rel if relative else sens
    y = max(cand_a, key=lambda i: sens[i].item())
    x = min(cand_b, key=lambda i: sens[i].item())
    p_y = phrases[y] if score[y].item() >= threshold else None
    p_x = phrases[x] if -score[x].item() >= threshold else None
    if p_x and p_y:
        text = template.format(p_x=p_x, p_y=p_y)
    elif p_y:
        text = TEMPLATE_AFTER_ONLY.format(p_y=p_y)
    elif p_x:
        text = TEMPLATE_BEFORE_ONLY.format(p_x=p_x)
    else:
        text = ""
    rows = [{"phrase": phrases[i], "side": side, "sensitivity": round(sens[i].item(), 5),
             "relative": round(rel[i].item(), 5)}
            for side, cands, sign in (("after", cand_a, -1), ("before", cand_b, 1))
            for i in sorted(cands, key=lambda i: sign * sens[i].item())]
    return PhraseChoice(text, p_x, p_y, score[x].item() if p_x else None, score[y].item() if p_y else None, rows)


INSTRUCTION_TEMPLATES = ("make it {p}", "turn it into {p}")  # an edit in words, from one phrase


def init_candidates(clip: Clip, vocab: tuple[str, ...], model: str, befores: list[Image.Image],
                    afters: list[Image.Image], phrase_settings: Any, count: int = 3) -> tuple[list[str], PhraseChoice]:
    """Texts worth trying as a fit's init (``--init best``), each a way this module words an edit: the caption of
    the afters, InstructBrush's phrase instruction (``phrase_settings``: the phrase search's options of
    :class:`invert.settings.InitSettings`), each of the
    ``count`` phrases whose similarity rises most from the befores to the afters put in an instruction template
    (and in the phrase template with the phrase that falls most), and the empty text. No duplicates, in that
    order; also the phrase search's result, which the file records."""
    from ..vocab import load_vocab, model_vocab

    phrases = load_vocab(vocab or model_vocab(model))
    s = phrase_settings
    choice = unique_phrases(clip, befores, afters, phrases, s.phrases_top, s.phrases_threshold,
                            s.phrases_relative_threshold, s.phrases_template)
    rising = [c["phrase"] for c in choice.candidates if c["side"] == "after"][:count]
    falling = next((c["phrase"] for c in choice.candidates if c["side"] == "before"), None)
    texts = [caption(clip, afters, phrases), choice.text]
    for p in rising:
        texts += [t.format(p=p) for t in INSTRUCTION_TEMPLATES]
        if falling is not None and falling != p:
            texts.append(s.phrases_template.format(p_x=falling, p_y=p))
    return list(dict.fromkeys([*texts, ""])), choice


def initial_text(init: str, vocab: tuple[str, ...], clip: Clip | None, model: str, befores: list[Image.Image],
                 afters: list[Image.Image], phrase_settings: Any, *, pez_steps: int = 300, pez_tokens: int = 10,
                 seed: int = 0) -> tuple[str, PhraseChoice | None]:
    """A fit's init text as ``init`` says, and for phrase initialization the phrases found: "empty", a "caption"
    of the afters, InstructBrush's "phrases" (``phrase_settings``: the phrase search's options of
    :class:`invert.settings.InitSettings`) or a "pez" hard prompt optimized against the afters."""
    from ..errors import InvertError
    from ..vocab import load_vocab, model_vocab

    if init == "empty":
        return "", None
    if clip is None:
        raise InvertError(f"--init {init} needs a CLIP model (or give --init-text)")
    if init == "pez":
        from .pez import pez_prompt

        return pez_prompt(clip, afters, tokens=pez_tokens, steps=pez_steps, seed=seed), None
    phrases = load_vocab(vocab or model_vocab(model))
    if init == "phrases":
        s = phrase_settings
        choice = unique_phrases(clip, befores, afters, phrases, s.phrases_top, s.phrases_threshold,
                                s.phrases_relative_threshold, s.phrases_template)
        return choice.text, choice
    return caption(clip, afters, phrases), None
