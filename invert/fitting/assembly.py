"""An instruction assembled from a fitted method: its tensors and the metadata an .inst file records (what was
fitted, on which model, from which exemplars, with which settings), so a fit can be audited and reproduced."""
from __future__ import annotations

from typing import Any

import torch

from .. import __version__
from ..backbones import Editor
from ..instruction import Instruction, Metadata
from ..methods.base import Method
from ..settings import FitSettings, as_dict
from .phrases import PhraseChoice


def make_instruction(method: Method, editor: Editor, settings: FitSettings, method_settings: Any = None, *,
                     clip_name: str = "", init_text: str = "", final_loss: float | None = None,
                     seconds: float = 0.0, exemplars: list[dict] | None = None, steps_done: int = 0,
                     stored: dict[str, torch.Tensor] | None = None, phrases: PhraseChoice | None = None,
                     extra_meta: dict | None = None) -> Instruction:
    options = as_dict(settings)
    if method_settings is not None:
        options.update(as_dict(method_settings))
    meta = Metadata(
        base_model=editor.model_id,
        backbone=editor.name,
        clip_model=clip_name,
        model_fingerprint=editor.fingerprint,
        init_text=init_text,
        num_tokens=method.num_tokens,
        text_guidance=settings.guidance,
        image_guidance=settings.image_guidance,
        resolution=settings.resolution,
        seed=settings.seed,
        noise_seed=settings.seed,
        steps=steps_done,
        final_loss=None if final_loss is None else float(f"{final_loss:.6g}"),
        fit_seconds=round(seconds, 2),
        exemplars=exemplars or [],
        invert_version=__version__,
        options=options,
        extra=method.extra_meta() or None,
        phrases=None if phrases is None else {"p_x": phrases.p_x, "p_y": phrases.p_y, "score_x": phrases.score_x,
                                              "score_y": phrases.score_y, "candidates": phrases.candidates},
        **(extra_meta or {}),
    )
    # Copies: a method's tensors share storage with its parameters, and an instruction made mid-fit (a checkpoint
    # handed to the caller) must stay the state of its step while the fit goes on.
    tensors = {k: v.clone() for k, v in method.tensors().items()}
    return Instruction(method.name, {**tensors, **(stored or {})}, meta)


__all__ = ["make_instruction"]
