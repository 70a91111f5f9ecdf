"""InstructBrush (Zhao et al. 2024): the instruction learned as the keys and values of its tokens inside every
cross-attention layer, with a separate set per time part.

Parameters are one K and one V tensor per part, each (m, sum of the layers' widths): every layer slices its
own columns, so the optimizer sees 2N leaves and an untouched part (sequential schedule) gets no update."""
from __future__ import annotations

import contextlib

import torch

from ..attention import BrushState, install, layer_widths
from ..editor import Editor, TextEncoding
from ..errors import InstructionFileError
from .base import DEFAULT_TOKENS, Method, append_text, check_prompt_tensors


def project_kv(editor: Editor, embeds: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every layer's own to_k/to_v of positions 1..m of ``embeds``, concatenated along the width: (m, W)."""
    modules = dict(editor.unet.named_modules())
    tokens = embeds[0, 1:m + 1].to(editor.dtype)
    keys, values = [], []
    with torch.no_grad():
        for name in layer_widths(editor.unet):
            attn = modules[name.removesuffix(".processor")]
            keys.append(attn.to_k(tokens).float())
            values.append(attn.to_v(tokens).float())
    return torch.cat(keys, -1), torch.cat(values, -1)


class Brush(Method):
    name = "brush"
    init_from = "phrases"
    learned_tensors = ("brush.k", "brush.v")

    def __init__(self, editor: Editor, init: torch.Tensor, m: int, keys: torch.Tensor, values: torch.Tensor,
                 init_text: str, sequential: bool = False):
        self.init = init.detach()  # (1, 77, d): the conditioning the text rows receive
        self.m, self.init_text, self.sequential = m, init_text, sequential
        self.dtype = editor.dtype
        self.keys = [k.detach().clone().float().requires_grad_(True) for k in keys]
        self.values = [v.detach().clone().float().requires_grad_(True) for v in values]
        self.state = BrushState(parts=len(self.keys), num_train_timesteps=editor.scheduler.config.num_train_timesteps,
                                source=lambda: {"k": torch.stack(self.keys), "v": torch.stack(self.values)})
        self.layers = [[name, width] for name, width in layer_widths(editor.unet).items()]

    @property
    def num_tokens(self) -> int:
        return self.m

    @property
    def parts(self) -> int:
        return len(self.keys)

    @classmethod
    def initialize(cls, editor: Editor, init: TextEncoding, parts: int = 5, tokens: int | None = None,
                   sequential: bool = False, init_text: str = "", **_) -> "Brush":
        m = tokens or (init.eos[0] - 1) or DEFAULT_TOKENS
        k, v = project_kv(editor, init.embeds, m)
        return cls(editor, init.embeds, m, [k] * parts, [v] * parts, init_text, sequential)

    def parameters(self) -> list[torch.Tensor]:
        return self.keys + self.values

    def text_embeds(self, timesteps: torch.Tensor) -> torch.Tensor:
        return self.init.to(self.dtype).expand(len(timesteps), -1, -1)

    def schedule(self, steps: int, num_train_timesteps: int, seed: int) -> torch.Tensor:
        """Timesteps per step: one from each part's range in a batch (default), or the paper's parts one after
        another (``sequential``); each part's own timesteps used once per pass, in shuffled order."""
        from ..fitting import timestep_order

        span = num_train_timesteps // self.parts
        per_part = [timestep_order(steps, span, seed + p) + p * span for p in range(self.parts)]
        return torch.cat(per_part)[:, None] if self.sequential else torch.stack(per_part, dim=1)

    def conditioning_rows(self, conditional: bool):
        return _layout(self.state, "all" if conditional else "none")

    def sampling_context(self, editor: Editor):
        return install(editor.unet, self.state)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"brush.k": torch.stack(self.keys).detach(), "brush.v": torch.stack(self.values).detach(),
                "brush.init": self.init.float()}

    def extra_meta(self) -> dict:
        return {"layers": self.layers, "parts": self.parts, "tokens": self.m, "sequential": self.sequential}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], meta: dict, editor: Editor, strength: float = 1.0
                     ) -> "Brush":
        check_prompt_tensors(editor, tensors["brush.init"], {"brush.k": tensors["brush.k"]})
        keys, values, init = tensors["brush.k"], tensors["brush.v"], tensors["brush.init"].to(editor.device)
        layers = [[n, w] for n, w in layer_widths(editor.unet).items()]
        stored = (meta.get("extra") or {}).get("layers")
        if (stored != layers or keys.dim() != 3 or keys.shape[-1] != sum(w for _, w in layers)
                or keys.shape != values.shape):
            raise InstructionFileError(f"brush K/V of shape {tuple(keys.shape)} do not fit this UNet's "
                                       f"{len(layers)} cross-attention layers")
        m = keys.shape[1]
        k0, v0 = project_kv(editor, init, m)
        keys, values = keys.to(editor.device), values.to(editor.device)
        keys, values = k0 + strength * (keys - k0), v0 + strength * (values - v0)
        return cls(editor, init, m, list(keys), list(values), meta.get("init_text", ""))

    def hybrid(self, editor: Editor, text: str) -> "Brush":
        """Encode the init text followed by ``text``; the learned K/V still replace positions 1..m."""
        if self.init_text and editor.encode_text([self.init_text]).eos[0] - 1 == self.m:
            embeds = editor.encode_text([f"{self.init_text} {text}"]).embeds
        else:  # learned positions beyond the init text's tokens: put the text after them
            embeds = append_text(editor, self.init, self.m - 1, text)
        return Brush(editor, embeds, self.m, self.keys, self.values, self.init_text)


@contextlib.contextmanager
def _layout(state: BrushState, layout: str):
    previous, state.layout = state.layout, layout
    try:
        yield
    finally:
        state.layout = previous
