"""The peak GPU memory of a fit and of apply on the full-size FLUX editors, projected from their shipped configs
on the meta device (no weights, no GPU): how a fit's memory splits, and whether a klein 4B fit fits in 24 GB.

How it is estimated (bf16 weights, fp32 learned state, batch 1, one pair at ``--resolution``):

- weights: every parameter of the full-size components, counted on the meta device, at 2 bytes;
- the fit's per-timestep noises (the loop draws one per training timestep, 1000, in the latents' shape);
- activations with gradient checkpointing (``--low-memory``): the inputs each transformer block keeps for its
  recomputation (the text and image token streams at the block's width), plus twice the largest single block's
  saved activations (its recomputed forward, and the gradients of the same size its backward makes), measured by
  running one double-stream and one single-stream block on meta tensors with a saved-tensors hook; attention is
  counted as a fused kernel saves it (q, k, v, the output and a float32 log-sum-exp per query), as flash or
  memory-efficient attention does on a GPU (the CPU's math kernel would keep the N x N attention weights);
- without checkpointing: every block's saved activations, the same per-block measurement times the block count;
- the text encoders: resident, or (``--low-memory``) on the CPU between encodings; their encoding of one prompt
  is small beside their weights.

The CFG rows without the instruction (klein) run without autograd and keep nothing. LoRA's and brush's own
tensors (a few MB) and the optimizer's are left out. These are estimates; ``python -m benchmarks.gpu`` measures
the peak when a GPU is lent.

    python -m benchmarks.flux_memory                 # klein base 4B and Kontext dev at 512 and 1024 px
"""
from __future__ import annotations

import argparse
import contextlib
from dataclasses import dataclass

import torch

from invert.backbones.flux2_klein import KLEIN_CONFIGS, Flux2Klein
from invert.backbones.flux_kontext import KONTEXT_CONFIGS, FluxKontext

BYTES = 2  # bf16
GIB = 2**30
MODELS = {"flux2-klein-base-4b": (Flux2Klein, KLEIN_CONFIGS), "flux1-kontext-dev": (FluxKontext, KONTEXT_CONFIGS)}


@dataclass
class Projection:
    model: str
    resolution: int
    weights_gb: dict[str, float]  # GiB, as every size here
    noises_gb: float
    boundaries_gb: float
    block_gb: float  # the largest block's saved activations
    blocks: int

    def fit_gb(self, low_memory: bool) -> float:
        text = sum(v for k, v in self.weights_gb.items() if k.startswith("text_encoder"))
        resident = sum(self.weights_gb.values()) - (text if low_memory else 0.0)
        activations = self.boundaries_gb + 2 * self.block_gb if low_memory else self.blocks * self.block_gb
        return resident + self.noises_gb + activations


class _FusedAttention(torch.autograd.Function):
    """Stands for a fused attention kernel on the meta device: saves what flash attention saves."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = torch.empty_like(q)
        lse = torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):
        raise NotImplementedError


@contextlib.contextmanager
def fused_attention():
    original = torch.nn.functional.scaled_dot_product_attention

    def attend(query, key, value, **options):
        return _FusedAttention.apply(query, key, value)

    torch.nn.functional.scaled_dot_product_attention = attend
    try:
        yield
    finally:
        torch.nn.functional.scaled_dot_product_attention = original


def saved_bytes(fn) -> int:
    """Bytes of the tensors autograd saves while ``fn`` runs (distinct storages counted once)."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        seen[id(t)] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), fused_attention():
        fn()
    return sum(seen.values())


def build(cls, folder):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("meta"):
            return cls.from_configs(folder)
    finally:
        torch.set_default_dtype(previous)


def project(name: str, resolution: int, text_tokens: int = 512) -> Projection:
    cls, folder = MODELS[name]
    pipe = build(cls, folder)
    tr = pipe.transformer
    weights = {part: sum(p.numel() for p in getattr(pipe, part).parameters()) * BYTES / GIB
               for part in ("transformer", "vae", "text_encoder", "text_encoder_2") if getattr(pipe, part, None)}
    side = resolution // (pipe.vae_scale_factor * 2)
    image = 2 * side * side  # the target's tokens and the input image's
    width = tr.config.num_attention_heads * tr.config.attention_head_dim
    latent = tr.config.in_channels * side * side  # per image, in the transformer's channels
    double, single = tr.transformer_blocks[0], tr.single_transformer_blocks[0]
    with torch.device("meta"):
        hidden = torch.empty(1, image, width, dtype=torch.bfloat16, requires_grad=True)
        text = torch.empty(1, text_tokens, width, dtype=torch.bfloat16, requires_grad=True)
        rotary = tuple(torch.empty(text_tokens + image, tr.config.attention_head_dim, dtype=torch.float32)
                       for _ in range(2))
        block_bytes = max(saved_bytes(lambda: _double(tr, double, hidden, text, rotary)),
                          saved_bytes(lambda: _single(tr, single, hidden, text, rotary)))
    blocks = len(tr.transformer_blocks) + len(tr.single_transformer_blocks)
    return Projection(name, resolution, weights, 1000 * latent * BYTES / GIB,
                      blocks * (text_tokens + image) * width * BYTES / GIB, block_bytes / GIB, blocks)


def _double(tr, block, hidden, text, rotary):
    width = hidden.shape[-1]
    if hasattr(tr, "double_stream_modulation_img"):  # FLUX.2: the blocks take shared modulations
        mod = torch.empty(1, 6 * width, dtype=hidden.dtype, device=hidden.device)
        return block(hidden, text, mod, mod, rotary)
    return block(hidden, text, torch.empty(1, width, dtype=hidden.dtype, device=hidden.device), rotary)


def _single(tr, block, hidden, text, rotary):
    width = hidden.shape[-1]
    if hasattr(tr, "single_stream_modulation"):  # FLUX.2's single blocks take the joint sequence
        mod = torch.empty(1, 3 * width, dtype=hidden.dtype, device=hidden.device)
        return block(torch.cat([text, hidden], dim=1), None, mod, rotary)
    return block(hidden, text, torch.empty(1, width, dtype=hidden.dtype, device=hidden.device), rotary)


def table(projections: list[Projection]) -> str:
    lines = ["| model | px | transformer GiB | text encoders GiB | noises GiB | checkpoint inputs GiB | "
             "largest block GiB | fit peak GiB, --low-memory | fit peak GiB, default |",
             "|---|---|---|---|---|---|---|---|---|"]
    for p in projections:
        text = sum(v for k, v in p.weights_gb.items() if k.startswith("text_encoder"))
        lines.append(f"| {p.model} | {p.resolution} | {p.weights_gb['transformer']:.2f} | {text:.2f} | "
                     f"{p.noises_gb:.2f} | {p.boundaries_gb:.2f} | {p.block_gb:.2f} | {p.fit_gb(True):.1f} | "
                     f"{p.fit_gb(False):.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(prog="python -m benchmarks.flux_memory", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--resolution", type=int, action="append", help="image side in px (repeatable; 512, 1024)")
    args = p.parse_args(argv)
    out = table([project(m, r) for m in args.models.split(",") for r in args.resolution or (512, 1024)])
    print(out)
    return out


if __name__ == "__main__":
    main()
