"""Projected peak GPU memory of one fit step at full size, without a GPU and without weights: the backbone's shipped
full-size configs built on the meta device (shapes only), one step of the real fitting loop run on it.

What is counted (bytes of the model's dtype; CUDA's max allocated, not the allocator's reserve or the CUDA context):

- weights: every parameter of the pipeline (denoiser, VAE, text encoders), and apart the text encoders' share;
- learned state: the method's fp32 parameters, their gradients and AdamW's two moments (16 bytes a parameter);
- the fit's noises: one per training timestep, at the latent size;
- activations: every tensor autograd saves for the backward pass of the step (a ``saved_tensors_hooks`` sum;
  the frozen weights that linear layers save are the weights above, not counted twice). On the meta device
  ``scaled_dot_product_attention`` runs the math kernel, which saves the attention matrix; a GPU runs a fused
  kernel that saves queries, keys, values, output and log-sum-exp, and that is what is counted;
- the backward pass's working set: twice the largest saved tensor (its gradient and one temporary), a margin
  rather than a measurement;
- with ``--low-memory`` (gradient checkpointing): what is saved outside the checkpointed blocks, each block's
  inputs, and the largest block's own saved tensors once (its recomputation in the backward pass).

Not counted: the validation's sampling between steps (no autograd; its VAE decode at full size is reported
apart as the largest VAE activation times three), the CLIP model of an init search or direction loss, and the
allocator's fragmentation. The GPU script (:mod:`benchmarks.gpu`) measures the real figure when a GPU is lent.

    python -m benchmarks.projection sdxl-instructpix2pix --resolution 1024 768
"""
from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

import torch
import torch.nn.functional as F

from invert.backbones import backbone_for_pipeline, pipeline_class_name
from invert.backbones.ip2p import CONFIGS
from invert.settings import FitSettings

from .speed import INIT_TEXT, make_method, synthetic_pairs, trainer_for

GB = 2**30
METHODS = ("visii", "brush", "lora")


class _FusedAttention(torch.autograd.Function):
    """Attention that saves for its backward pass what a GPU's fused kernel saves (q, k, v, the output and the
    fp32 log-sum-exp per query), computed by the math kernel (on the meta device: shapes only)."""

    @staticmethod
    def forward(ctx, query, key, value, *args):
        with torch.no_grad():
            out = _SDPA(query, key, value, *args[:-1], **args[-1])
        ctx.save_for_backward(query, key, value, out, query.new_empty(query.shape[:-1], dtype=torch.float32))
        ctx.others = len(args)
        return out

    @staticmethod
    def backward(ctx, grad):
        query, key, value, *_ = ctx.saved_tensors
        return (torch.empty_like(query), torch.empty_like(key), torch.empty_like(value), *([None] * ctx.others))


_SDPA = F.scaled_dot_product_attention


def _fused(query, key, value, *args, **kwargs):
    return _FusedAttention.apply(query, key, value, *args, kwargs)


class SavedBytes:
    """Counts the bytes autograd saves, leaving out the model's own parameters and buffers; with
    ``checkpointed``, calls of torch's checkpoint count their inputs and, apart, their own saved bytes (the
    largest is the recomputation's peak)."""

    def __init__(self, model_tensors: set[int]):
        self.model_tensors = model_tensors
        self.total = 0
        self.largest = 0
        self.largest_block = 0

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        base = tensor._base if tensor._base is not None else tensor
        if id(base) not in self.model_tensors:
            size = tensor.numel() * tensor.element_size()
            self.total += size
            self.largest = max(self.largest, size)
        return tensor

    def checkpoint(self, function, *args, **kwargs):
        """torch.utils.checkpoint.checkpoint's memory: it keeps the inputs; the block's own saved tensors live
        only while the backward pass recomputes it."""
        kwargs.pop("use_reentrant", None)
        inner = SavedBytes(self.model_tensors)
        with torch.autograd.graph.saved_tensors_hooks(inner.pack, lambda t: t):
            out = function(*args, **kwargs)
        self.largest_block = max(self.largest_block, inner.total)
        for tensor in (a for a in args if isinstance(a, torch.Tensor)):
            self.pack(tensor)
        return out


@contextlib.contextmanager
def counted(saved: SavedBytes):
    import torch.utils.checkpoint

    original = torch.utils.checkpoint.checkpoint
    F.scaled_dot_product_attention = _fused
    torch.utils.checkpoint.checkpoint = saved.checkpoint
    try:
        with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t):
            yield
    finally:
        F.scaled_dot_product_attention = _SDPA
        torch.utils.checkpoint.checkpoint = original


def meta_editor(folder: Path, dtype: torch.dtype):
    """The backbone of ``folder``'s configs, built on the meta device (no weights are drawn)."""
    cls = backbone_for_pipeline(pipeline_class_name(str(folder)), str(folder))
    with torch.device("meta"):
        pipe = cls.from_configs(folder, dtype=dtype)
    return cls(pipe, f"random:{folder.name}", torch.device("meta"), dtype, fingerprint="meta")


def largest_activation(module: torch.nn.Module, run) -> int:
    """The largest output of any submodule while ``run()`` runs, in bytes."""
    largest = [0]

    def hook(mod, args, out):
        for t in out if isinstance(out, tuple) else (out,):
            if isinstance(t, torch.Tensor):
                largest[0] = max(largest[0], t.numel() * t.element_size())

    handles = [m.register_forward_hook(hook) for m in module.modules()]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    return largest[0]


def project(editor, method: str, resolution: int, low_memory: bool) -> dict:
    """One fit step of ``method`` at ``resolution`` on the meta-device ``editor``: the figures of the module
    docstring, in GiB."""
    model_tensors = {id(t) for m in editor.frozen_modules() for t in (*m.parameters(), *m.buffers())}
    weights = sum(t.numel() * t.element_size() for m in editor.frozen_modules() for t in m.parameters())
    text = sum(t.numel() * t.element_size() for m in editor.text_modules() for t in m.parameters())
    befores, afters = synthetic_pairs(1, resolution)
    learned = make_method(editor, method, 5, False)
    trainer = trainer_for(editor, learned, befores, afters, FitSettings(steps=1, resolution=resolution,
                                                                       init_text=INIT_TEXT))
    state = 16 * sum(p.numel() for p in learned.parameters())
    noises = trainer.data.noises.numel() * trainer.data.noises.element_size()
    saved = SavedBytes(model_tensors)
    editor.set_low_memory(low_memory)
    try:
        with counted(saved), learned.installed():
            trainer.step_loss(0, lambda loss: loss)
    finally:
        editor.set_low_memory(False)
    activations = saved.total + saved.largest_block
    working = 2 * saved.largest
    x0 = trainer.data.target
    decode = 3 * largest_activation(editor.vae, lambda: editor.vae.decode(x0))
    peak = weights + state + noises + activations + working
    return {"method": method, "resolution": resolution, "low_memory": low_memory,
            "rows": int(trainer.schedule.shape[1]), "weights_gib": weights / GB, "text_encoders_gib": text / GB,
            "learned_state_mib": state / 2**20, "noises_mib": noises / 2**20, "activations_gib": activations / GB,
            "working_gib": working / GB, "peak_gib": peak / GB, "peak_without_text_encoders_gib": (peak - text) / GB,
            "vae_decode_gib": (weights + decode) / GB}


def table(rows: list[dict], name: str) -> str:
    lines = [f"Projected fit-step peak memory of {name} (bf16 weights, fp32 learned state; meta device, "
             "benchmarks/projection.py)", "",
             "| method | resolution | --low-memory | weights GiB (text encoders) | activations GiB | peak GiB | "
             "peak GiB, text encoders freed |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} ({r['rows']} row{'s' if r['rows'] > 1 else ''} a step) | {r['resolution']} | "
                     f"{'yes' if r['low_memory'] else 'no'} | {r['weights_gib']:.2f} ({r['text_encoders_gib']:.2f}) | "
                     f"{r['activations_gib']:.2f} | {r['peak_gib']:.1f} | {r['peak_without_text_encoders_gib']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(prog="python -m benchmarks.projection", description=__doc__.split("\n\n")[0])
    p.add_argument("configs", help="a shipped config folder's name (invert/backbones/configs/) or a folder")
    p.add_argument("--resolution", type=int, nargs="+", default=None, help="default: the model's own")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"))
    args = p.parse_args(argv)
    folder = Path(args.configs) if Path(args.configs).is_dir() else CONFIGS / args.configs
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    editor = meta_editor(folder, dtype)
    rows = [project(editor, method, resolution, low)
            for resolution in args.resolution or [editor.resolution]
            for method in args.methods.split(",") for low in (False, True)]
    print(table(rows, folder.name))
    return rows


if __name__ == "__main__":
    main()
