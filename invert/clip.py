"""CLIP features for the direction loss, phrase ranking and metrics, from transformers or open_clip."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from PIL import Image

from .backbones.model_info import paired_clip, resolve_model_path, where
from .errors import ModelLoadError

if TYPE_CHECKING:
    from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

DEFAULT_CLIP = "openai/clip-vit-large-patch14"
OPEN_CLIP_PREFIX = "open_clip:"


class Clip:
    """Projected CLIP image and text features, and the text projection as a differentiable map."""

    name: str
    text_width: int

    def image_features(self, images: list[Image.Image]) -> torch.Tensor:
        raise NotImplementedError

    def text_features(self, texts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def project_text(self, hidden: torch.Tensor) -> torch.Tensor:
        """Map text-tower hidden states (..., width) into the joint space, as CLIP does with its pooled token."""
        raise NotImplementedError


class TransformersClip(Clip):
    def __init__(self, name: str, model: CLIPModel, processor: CLIPImageProcessor, tokenizer: CLIPTokenizer,
                 device: torch.device):
        self.name, self.model, self.processor, self.tokenizer, self.device = name, model, processor, tokenizer, device
        self.model.requires_grad_(False).eval().to(device)
        self.text_width = model.config.text_config.hidden_size

    @torch.no_grad()
    def image_features(self, images: list[Image.Image]) -> torch.Tensor:
        pixels = self.processor(images=images, return_tensors="pt").pixel_values.to(self.device)
        pooled = self.model.vision_model(pixel_values=pixels.to(self.model.dtype)).pooler_output
        return self.model.visual_projection(pooled).float()

    @torch.no_grad()
    def text_features(self, texts: list[str]) -> torch.Tensor:
        tok = self.tokenizer(texts, padding="max_length", max_length=self.model.config.text_config.max_position_embeddings,
                             truncation=True, return_tensors="pt").to(self.device)
        pooled = self.model.text_model(input_ids=tok.input_ids).pooler_output
        return self.model.text_projection(pooled).float()

    def project_text(self, hidden: torch.Tensor) -> torch.Tensor:
        weight = self.model.text_projection.weight
        return hidden.to(weight.dtype) @ weight.T


class OpenClip(Clip):
    def __init__(self, name: str, device: torch.device):
        import open_clip

        arch, _, tag = name[len(OPEN_CLIP_PREFIX):].partition("/")
        try:
            model, _, self.preprocess = open_clip.create_model_and_transforms(arch, pretrained=tag or None)
        except Exception as exc:
            raise ModelLoadError(f"cannot load open_clip model '{arch}/{tag}': {str(exc).splitlines()[0]} (its weights "
                                 "must already be in the local cache; no network here?)") from None
        self.name, self.model, self.device = name, model.requires_grad_(False).eval().to(device), device
        self.tokenizer = open_clip.get_tokenizer(arch)
        self.text_width = model.text_projection.shape[0]

    @torch.no_grad()
    def image_features(self, images: list[Image.Image]) -> torch.Tensor:
        pixels = torch.stack([self.preprocess(img) for img in images]).to(self.device)
        return self.model.encode_image(pixels).float()

    @torch.no_grad()
    def text_features(self, texts: list[str]) -> torch.Tensor:
        return self.model.encode_text(self.tokenizer(texts).to(self.device)).float()

    def project_text(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden.to(self.model.text_projection.dtype) @ self.model.text_projection


def _transformers_clip(name: str, device: torch.device) -> TransformersClip:
    from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

    from .backbones.tokenizer import clip_tokenizer

    folder = Path(name)
    try:
        model = CLIPModel.from_pretrained(name)
    except Exception as exc:
        if folder.is_dir():
            raise ModelLoadError(f"{folder}: not a transformers CLIPModel folder ({str(exc).splitlines()[0]})") from None
        raise ModelLoadError(f"cannot load CLIP model '{name}': not in the Hugging Face cache and the hub cannot be "
                             f"reached; download it where there is network (hf download {name} --local-dir clip) and "
                             "pass --clip-model clip") from None
    size = model.config.vision_config.image_size
    try:
        processor = CLIPImageProcessor.from_pretrained(name)
    except Exception:  # a bare model folder (like the toy CLIP): CLIP's standard preprocessing at its size
        processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    # Every CLIP text tower uses the same BPE. A folder without tokenizer files (like the toy CLIP) must not go
    # to from_pretrained: transformers then builds a tokenizer with an empty vocabulary, mapping every word to <unk>.
    has_tokenizer = not folder.is_dir() or any((folder / f).exists() for f in ("vocab.json", "tokenizer.json"))
    try:
        tokenizer = CLIPTokenizer.from_pretrained(name) if has_tokenizer else clip_tokenizer()
    except Exception:
        tokenizer = clip_tokenizer()
    return TransformersClip(name, model, processor, tokenizer, device)


def clip_name_for(clip_model: str | None, model: str | None) -> str:
    """``clip_model`` if given; else the base model folder's own ``clip/`` (as the toy model has), or the CLIP its
    ``invert.json`` names (as the toy DiT does); else ViT-L/14."""
    if clip_model:
        return clip_model
    if model:
        folder = Path(resolve_model_path(model)) / "clip"
        if (folder / "config.json").exists():
            return str(folder)
        return paired_clip(model) or DEFAULT_CLIP
    return DEFAULT_CLIP


def load_clip(name: str = DEFAULT_CLIP, device: torch.device | str = "cpu") -> Clip:
    """A transformers CLIPModel (hub id or folder), or ``open_clip:ARCH/PRETRAINED``."""
    device = torch.device(device)
    logging.getLogger("invert").info("loading CLIP %s (%s) ...", name, "open_clip's cache" if
                                     name.startswith(OPEN_CLIP_PREFIX) else where(name))
    if name.startswith(OPEN_CLIP_PREFIX):
        return OpenClip(name, device)
    return _transformers_clip(name, device)
