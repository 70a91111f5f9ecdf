"""What a method is: how it turns learned parameters into conditioning for the frozen UNet.

The fitting loop and the sampler are shared; a method only says how to initialize its parameters from the
init text, what conditioning a text row gets at timestep ``t``, any extra loss, and how it is stored."""
from __future__ import annotations

import contextlib
from typing import ContextManager

import torch

from ..editor import Editor, TextEncoding
from ..errors import InstructionFileError, InvertError

DEFAULT_TOKENS = 10  # learned positions for an empty init text (the paper's instructions have about 10 tokens)


class Method:
    name: str
    learned_tensors: tuple[str, ...] = ()  # what --mix and --strength act on
    init_from = "caption"  # default init text: a CLIP caption of the afters, "phrases" (unique phrases) or "empty"
    conditions_all_rows = False  # True: the parameters change every row of the guidance batch, not only the text rows

    def parameters(self) -> list[torch.Tensor]:
        """The fp32 leaf tensors the optimizer updates."""
        raise NotImplementedError

    def text_embeds(self, timesteps: torch.Tensor) -> torch.Tensor:
        """Encoder hidden states for the text-conditioned rows, one per timestep, in the editor's dtype."""
        raise NotImplementedError

    def extra_loss(self) -> torch.Tensor | None:
        return None

    def loss_terms(self, step: int) -> list[tuple[bool, float]]:
        """Step ``step``'s noise-loss terms as (reversed, weight): reversed terms edit the afters back into the
        befores under :meth:`direction` (True)."""
        return [(False, 1.0)]

    def direction(self, reverse: bool) -> ContextManager:
        """Condition as the forward instruction, or as the reverse one (after -> before)."""
        if reverse:
            raise InvertError(f"this {self.name} instruction has no reverse (fit it with --reverse)")
        return contextlib.nullcontext()

    def schedule(self, steps: int, num_train_timesteps: int, seed: int) -> torch.Tensor:
        """(steps, rows) timesteps: each step's UNet batch. One row: every timestep once per pass, shuffled."""
        from ..fitting import timestep_order

        return timestep_order(steps, num_train_timesteps, seed)[:, None]

    def conditioning_rows(self, conditional: bool) -> ContextManager:
        """Marks the UNet calls whose rows are all text-conditioned (True) or all not (False)."""
        return contextlib.nullcontext()

    def extra_meta(self) -> dict:
        """Method facts the .inst metadata records (under ``extra``)."""
        return {}

    def tensors(self) -> dict[str, torch.Tensor]:
        """What the .inst file stores."""
        raise NotImplementedError

    def hybrid(self, editor: Editor, text: str) -> "Method":
        """The same instruction with ``text``'s tokens following the learned ones."""
        raise NotImplementedError

    def sampling_context(self, editor: Editor) -> ContextManager:
        """Installed on the UNet while sampling or fitting (attention processors); nothing by default."""
        return contextlib.nullcontext()

    @classmethod
    def mix_tensors(cls, tensors: list[dict[str, torch.Tensor]], metas: list[dict], weights: list[float]
                    ) -> tuple[dict[str, torch.Tensor], dict | None]:
        """A weighted sum of the ``learned_tensors`` (LoRWeB's mixed basis, without its training); the rest, and
        the method metadata (``extra``), from the first."""
        for other in tensors[1:]:
            for key in cls.learned_tensors:
                if other[key].shape != tensors[0][key].shape:
                    raise InvertError(f"cannot mix: '{key}' has shape {tuple(other[key].shape)} in one and "
                                      f"{tuple(tensors[0][key].shape)} in another (different token counts?)")
        out = dict(tensors[0])
        for key in cls.learned_tensors:
            out[key] = sum(w * t[key].float() for w, t in zip(weights, tensors))
        return out, metas[0].get("extra")


def check_prompt_tensors(editor: Editor, init: torch.Tensor, learned: dict[str, torch.Tensor]) -> None:
    """Refuse stored tensors that do not fit this model's text encoder: ``init`` must be (1, positions, width),
    each of ``learned`` (..., m, width or any) with 1 <= m <= positions - 2 learned token positions."""
    positions, width = editor.tokenizer.model_max_length, editor.text_encoder.config.hidden_size
    if tuple(init.shape) != (1, positions, width):
        raise InstructionFileError(f"its prompt embedding has shape {tuple(init.shape)}; this model's text encoder "
                                   f"gives (1, {positions}, {width})")
    for name, tensor in learned.items():
        if tensor.dim() < 2 or not 1 <= tensor.shape[-2] <= positions - 2:
            raise InstructionFileError(f"tensor '{name}' of shape {tuple(tensor.shape)} does not hold 1 to "
                                       f"{positions - 2} learned token positions")


def append_text(editor: Editor, embeds: torch.Tensor, eos: int, text: str) -> torch.Tensor:
    """Place ``text``'s encoding (BOS and tokens) after a prompt whose EOS is at ``eos``, leaving that EOS and
    one padding position between them, as VISII's official hybrid instructions do."""
    extra = editor.encode_text([text])
    start, count = eos + 2, extra.eos[0]
    count = min(count, embeds.shape[1] - start)
    out = embeds.clone()
    if count > 0:
        out[:, start:start + count] = extra.embeds[:, :count].to(out.dtype)
    return out


__all__ = ["DEFAULT_TOKENS", "Method", "TextEncoding", "append_text", "check_prompt_tensors"]
