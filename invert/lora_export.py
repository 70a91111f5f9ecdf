"""A lora instruction's adapter as a diffusers LoRA file, for ``pipe.load_lora_weights`` of any IP2P pipeline."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from .errors import InvertError
from .instruction import Instruction, write_atomically
from .methods.lora import Lora, lora_config


def export_lora(instruction: Instruction, path: str | os.PathLike, force: bool = False, reverse: bool = False
                ) -> Path:
    """Write the adapter with diffusers' own ``save_lora_weights`` (its key names and its adapter-config
    metadata, so rank and alpha load as fitted); ``reverse``: the negated adapter, which undoes the edit."""
    from diffusers import StableDiffusionInstructPix2PixPipeline

    if instruction.method != Lora.name:
        raise InvertError(f"{instruction.path or 'instruction'}: a {instruction.method} instruction holds no LoRA "
                          "(fit one with --method lora)")
    path = Path(path)
    extra = instruction.meta.get("extra") or {}
    layers = {k.removeprefix("unet."): v.contiguous() for k, v in instruction.tensors.items() if k.startswith("unet.")}
    if reverse:
        layers = {k: -v if k.endswith("lora_B.weight") else v for k, v in layers.items()}
    config = lora_config(int(extra["rank"]), float(extra["alpha"]), extra["targets"]).to_dict()

    def write(tmp: str) -> None:
        folder = tempfile.mkdtemp(dir=Path(tmp).parent, prefix=".lora-export.")
        try:
            StableDiffusionInstructPix2PixPipeline.save_lora_weights(
                folder, unet_lora_layers=layers, weight_name="adapter.safetensors", unet_lora_adapter_metadata=config)
            os.replace(Path(folder) / "adapter.safetensors", tmp)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    write_atomically(path, write, force=force)
    return path
