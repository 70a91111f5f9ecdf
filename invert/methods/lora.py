"""A LoRA of change (after Song et al. 2024, "LoRA of Change"), fitted per edit: a low-rank adapter on the
denoiser's attention projections learned from the exemplars, with the paper's LoRA Reverse: the negated adapter
must edit after -> before.

The adapter is peft's, added with diffusers' ``add_adapter`` only while fitting or sampling, so the shared frozen
denoiser is left as it was. Its tensors are named as peft's own ``get_peft_model_state_dict`` names them, prefixed
as the backbone's diffusers LoRA files are (``unet.``, ``transformer.``: so an exported copy loads with
``pipe.load_lora_weights``); the method's fp32 parameters are the adapter's weights while it is installed."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import torch
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from torch import nn

from ..backbones import Editor, TextEncoding
from ..backbones.rows import Rows
from ..errors import InstructionFileError, InvertError
from ..instruction.metadata import Metadata
from ..settings.fields import BadValue, convert
from .base import Conditioning, Method, check_mixable, check_prompt_tensors, mix_base
from .settings import LoraSettings

ADAPTER = "invert_lora"


def lora_config(rank: int, alpha: float, targets: tuple[str, ...] | list[str]) -> LoraConfig:
    return LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets), init_lora_weights=True)


def _key(name: str) -> str:
    return name.replace(".", "-")  # a ParameterDict key may not contain dots


@contextlib.contextmanager
def adapter(editor: Editor, config: LoraConfig) -> Iterator[dict[str, torch.Tensor]]:
    """The denoiser with this (freshly initialized) adapter for the block; yields peft's state dict of it."""
    unet = editor.denoiser
    if getattr(unet, "peft_config", None):
        raise InvertError("the UNet already holds LoRA adapters (" + ", ".join(unet.peft_config) + "): fuse them "
                          "(pipe.fuse_lora()) or unload them (pipe.unload_lora_weights()) before using a lora "
                          "instruction")
    editor.fingerprint  # computed on the bare UNet: the adapter renames its modules' parameters
    try:
        unet.add_adapter(config, ADAPTER)
    except ValueError as exc:  # peft's NoMatchingPeftModuleError: no module of this UNet has these names
        unet.unload_lora()
        raise InvertError(f"--lora-targets {','.join(sorted(config.target_modules))}: no module of this UNet "
                          "matches") from exc
    try:
        yield get_peft_model_state_dict(unet, adapter_name=ADAPTER)
    finally:
        unet.unload_lora()


class Lora(Method):
    name = "lora"
    init_from = "empty"  # the edit lives in the adapter; the prompt is empty unless --init-text gives one
    conditions_all_rows = True
    direction_in_conditioning = False  # -Delta is the adapter's scale, state of the UNet's peft layers
    exports = {"lora": "the adapter as a diffusers LoRA file for pipe.load_lora_weights"}

    def __init__(self, editor: Editor, init: torch.Tensor, weights: dict[str, torch.Tensor], rank: int,
                 alpha: float, targets: tuple[str, ...], init_text: str = "", reverse: str = "swap",
                 scale: float = 1.0, pooled: torch.Tensor | None = None):
        super().__init__(editor)
        self.register_buffer("init", init.detach().float())
        self.keep_pooled(pooled)
        self.keys = list(weights)  # peft's state-dict names
        self.weights = nn.ParameterDict({_key(k): nn.Parameter(v.detach().to(editor.device, torch.float32).clone())
                                         for k, v in weights.items()})
        self.rank, self.alpha, self.targets = rank, float(alpha), tuple(targets)
        self.init_text, self.reverse_mode, self.scale = init_text, reverse, scale
        self.swapped: torch.Tensor | None = None  # per step: the pair order exchanged (reverse "swap")
        self._layers: list[nn.Module] = []  # the installed adapter's peft layers

    @property
    def num_tokens(self) -> int:
        return 0

    @property
    def needs_reverse_instruction(self) -> bool:
        return False  # the reverse is -Delta, learned by the same adapter

    @classmethod
    def initialize(cls, editor: Editor, init: TextEncoding, init_text: str = "",
                   settings: LoraSettings = LoraSettings(), seed: int = 0) -> "Lora":
        """peft's initialization (A Kaiming-uniform, B zero: the adapter starts as the identity edit), drawn on
        the CPU from ``seed`` so every device starts from the same adapter."""
        alpha = settings.lora_alpha or settings.lora_rank
        targets = settings.lora_targets or editor.lora_targets  # recorded in the file: it loads on any version
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            with adapter(editor, lora_config(settings.lora_rank, alpha, targets)) as state:
                weights = {k: v.detach().float().clone() for k, v in state.items()}
        return cls(editor, init.embeds, weights, settings.lora_rank, alpha, targets, init_text, settings.lora_reverse,
                   pooled=init.pooled)

    def weight(self, key: str) -> nn.Parameter:
        return self.weights[_key(key)]

    # -- conditioning ---------------------------------------------------------------------------------------
    def changes_text_free_rows(self) -> bool:
        """An adapter whose B matrices are all zero (peft's start: an untrained init candidate) adds exact zeros
        to every layer, so it leaves every row as the model computes it; any other changes every row."""
        return any(bool(self.weight(k).detach().any()) for k in self.keys if ".lora_B." in k)

    def conditioning(self, rows: Rows, uncond: TextEncoding, reverse: bool = False) -> Conditioning:
        return self.condition(rows, self.init.to(self.editor.dtype), uncond)

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """The adapter on the UNet with this method's fp32 parameters as its weights (gradients reach them)."""
        unet = self.editor.denoiser
        with adapter(self.editor, lora_config(self.rank, self.alpha, self.targets)) as state:
            if sorted(state) != sorted(self.keys):
                raise InstructionFileError("its LoRA tensors do not name this UNet's adapted layers")
            layers = []
            for key in self.keys:
                path, _, which = key.rpartition(".lora_")  # which: "A.weight" or "B.weight"
                module = unet.get_submodule(path)
                getattr(module, f"lora_{which[0]}")[ADAPTER].weight = self.weight(key)
                layers.append(module)
            self._layers = list(dict.fromkeys(layers))
            for module in self._layers:
                module.set_scale(ADAPTER, self.scale)
            try:
                yield
            finally:
                self._layers = []

    @contextlib.contextmanager
    def direction(self, reverse: bool) -> Iterator[None]:
        """-Delta: every adapted layer's scale negated (peft's ``set_scale`` on the installed layers)."""
        if not reverse:
            yield
            return
        for module in self._layers:
            module.set_scale(ADAPTER, -self.scale)
        try:
            yield
        finally:
            for module in self._layers:
                module.set_scale(ADAPTER, self.scale)

    # -- fitting --------------------------------------------------------------------------------------------
    def schedule(self, steps: int, num_train_timesteps: int, seed: int) -> torch.Tensor:
        gen = torch.Generator("cpu").manual_seed(seed + 2)
        self.swapped = torch.rand(steps, generator=gen) < 0.5
        return super().schedule(steps, num_train_timesteps, seed)

    def loss_terms(self, step: int) -> list[tuple[bool, float]]:
        """LoRA Reverse: -Delta must edit after -> before. 'swap' exchanges the pair order (and the adapter's
        sign) at random each step, the paper's recommended variant; 'both' adds the reversed pair's loss to
        every step (twice the cost); 'off' fits the forward edit alone."""
        if self.reverse_mode == "swap":
            return [(bool(self.swapped[step]), 1.0)]
        return [(False, 1.0), (True, 1.0)] if self.reverse_mode == "both" else [(False, 1.0)]

    # -- the file, mixing, exporting ------------------------------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        prefix = self.editor.lora_prefix
        return {**{prefix + k: self.weight(k).detach() for k in self.keys}, "lora.init": self.init.detach(),
                **self.pooled_tensors()}

    def extra_meta(self) -> dict:
        return {"rank": self.rank, "alpha": self.alpha, "targets": list(self.targets), "reverse": self.reverse_mode}

    @classmethod
    def from_instruction(cls, tensors: dict[str, torch.Tensor], meta: Metadata, editor: Editor, strength: float = 1.0,
                         reverse: bool = False) -> "Lora":
        """``reverse``: the negated adapter, -Delta, which the fit trained to undo the edit."""
        return cls.from_tensors(tensors, meta, editor, -strength if reverse else strength)

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], meta: Metadata, editor: Editor, strength: float = 1.0
                     ) -> "Lora":
        extra = meta.extra or {}
        rank, alpha, targets = adapter_settings(meta)
        prefix = editor.lora_prefix
        weights = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        check_adapter(editor, weights, rank)
        init = tensors["lora.init"]
        check_prompt_tensors(editor, init, {})
        return cls(editor, init.to(editor.device), weights, rank, alpha, targets, meta.init_text,
                   extra.get("reverse", "off"), scale=strength, pooled=tensors.get("lora.init_pooled"))

    def hybrid(self, text: str) -> "Lora":
        encoding = self.editor.encode_text([f"{self.init_text} {text}".strip()])
        return self._with(encoding.embeds, {k: self.weight(k) for k in self.keys}, self.rank, self.alpha,
                          encoding.pooled)

    def _with(self, init: torch.Tensor, weights: dict[str, torch.Tensor], rank: int, alpha: float,
              pooled: torch.Tensor | None = None) -> "Lora":
        return Lora(self.editor, init, weights, rank, alpha, self.targets, self.init_text, self.reverse_mode, self.scale,
                    pooled if pooled is not None else self.pooled_vector())

    @classmethod
    def mix(cls, methods: list["Lora"], weights: list[float]) -> "Lora":
        """The adapters' changes combined exactly (an adapter's change Delta W = scale B A is what is linear, not
        A or B): w1 Delta1 + w2 Delta2 = [w1 s1 B1, w2 s2 B2] [A1; A2], one adapter of the summed rank with
        each adapter's scale (alpha / rank, times its strength) folded into its B. No adapter is the init, so
        weights not summing to 1 scale the combined change as --strength does. The prompt, which no fit learns,
        is the base: the init encodings averaged (see :func:`mix_base`)."""
        check_mixable(methods)
        keys = methods[0].keys
        if any(sorted(m.keys) != sorted(keys) for m in methods[1:]):
            raise InvertError("cannot mix LoRA instructions with different target modules")
        out = {}
        for key in keys:
            if ".lora_A." in key:
                out[key] = torch.cat([m.weight(key).detach() for m in methods])
            else:
                out[key] = torch.cat([w * m.scale * m.alpha / m.rank * m.weight(key).detach()
                                      for w, m in zip(weights, methods)], dim=1)
        rank = sum(m.rank for m in methods)
        pooled = None if methods[0].pooled_vector() is None else \
            mix_base([m.pooled_vector() for m in methods], weights)
        mixed = methods[0]._with(mix_base([m.init for m in methods], weights), out, rank, rank, pooled)
        mixed.scale = 1.0
        return mixed

    @classmethod
    def export(cls, kind: str, tensors: dict[str, torch.Tensor], meta: Metadata, path: str | os.PathLike,
               reverse: bool = False) -> None:
        """``lora``: the adapter with diffusers' own ``save_lora_weights`` (its key names and its adapter-config
        metadata, so rank and alpha load as fitted); ``reverse``: the negated adapter, which undoes the edit."""
        if kind != "lora":
            super().export(kind, tensors, meta, path, reverse)
        from ..backbones import backbone_class

        backbone = backbone_class(meta.backbone)
        prefix = backbone.lora_prefix
        layers = {k[len(prefix):]: (-v if reverse and ".lora_B." in k else v).contiguous()
                  for k, v in tensors.items() if k.startswith(prefix)}
        config = lora_config(*adapter_settings(meta)).to_dict()
        folder = tempfile.mkdtemp(dir=Path(path).parent, prefix=".lora-export.")
        try:
            backbone.save_lora(folder, layers, config, "adapter.safetensors")
            os.replace(Path(folder) / "adapter.safetensors", path)
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def adapter_settings(meta: Metadata) -> tuple[int, float, tuple[str, ...]]:
    """The adapter's rank, alpha and target module names as the file's metadata records them (``extra``),
    checked: a value that is not what invert writes (a rank past any number, a NaN alpha, the targets as one
    string, whose letters would be taken for names) is refused, never turned into another."""
    extra = meta.extra or {}
    if not all(key in extra for key in ("rank", "alpha", "targets")):
        raise InstructionFileError("its metadata lacks the adapter's rank, alpha and targets")
    values = {}
    for key, kind, limits in (("rank", int, {"minimum": 1}), ("alpha", float, {"above": 0}), ("targets", list, {})):
        try:
            values[key] = convert(extra[key], kind, limits)
            if key == "targets" and not (values[key] and all(isinstance(t, str) and t for t in values[key])):
                raise BadValue("expected a list of module names")
        except BadValue as exc:
            raise InstructionFileError(f"metadata 'extra': the adapter's {key}: {exc}") from None
    return values["rank"], values["alpha"], tuple(values["targets"])


def check_adapter(editor: Editor, weights: dict[str, torch.Tensor], rank: int) -> None:
    """Refuse stored adapter tensors that do not fit this UNet: every key a Linear of it, with rank ``rank``."""
    if not weights:
        raise InstructionFileError("it holds no LoRA tensors")
    modules = dict(editor.denoiser.named_modules())
    for key, tensor in weights.items():
        stem, _, which = key.rpartition(".lora_")
        module = modules.get(stem)
        if not isinstance(module, torch.nn.Linear) or which not in ("A.weight", "B.weight"):
            raise InstructionFileError(f"LoRA tensor '{editor.lora_prefix}{key}' names no linear layer of this UNet")
        expected = (rank, module.in_features) if which == "A.weight" else (module.out_features, rank)
        if tuple(tensor.shape) != expected:
            raise InstructionFileError(f"LoRA tensor '{editor.lora_prefix}{key}' has shape {tuple(tensor.shape)}, this UNet "
                                       f"needs {expected}")
