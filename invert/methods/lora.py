"""A LoRA of change (after Song et al. 2024, "LoRA of Change"), fitted per edit: a low-rank adapter on the UNet's
attention projections learned from the exemplars, with the paper's LoRA Reverse: the negated adapter must edit
after -> before.

The adapter is peft's, installed through diffusers' ``add_adapter`` only while fitting or sampling, so the
shared frozen UNet is left as it was. Its tensors are stored under the key names diffusers' LoRA loaders use
(``unet.<module>.lora_A.weight``), so an exported copy loads with ``pipe.load_lora_weights``."""
from __future__ import annotations

import contextlib

import torch
from peft import LoraConfig

from ..editor import Editor, TextEncoding
from ..errors import InstructionFileError, InvertError
from .base import Method, check_prompt_tensors

ADAPTER = "invert_lora"
DEFAULT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")  # every attention projection, as diffusers' LoRA scripts
REVERSE_MODES = ("swap", "both", "off")


def lora_config(rank: int, alpha: float, targets: tuple[str, ...] | list[str]) -> LoraConfig:
    return LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets), init_lora_weights=True)


@contextlib.contextmanager
def installed(editor: Editor, config: LoraConfig, weights: dict[str, torch.Tensor] | None = None,
              scale: float = 1.0):
    """The UNet with this adapter, bound to ``weights`` (diffusers key names) when given, for the block."""
    unet = editor.unet
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
        if weights is not None:
            for key, (module, which) in _lora_modules(unet).items():
                getattr(module, which)[ADAPTER].weight = weights[key]  # the same Parameter: gradients reach it
        unet.set_adapters(ADAPTER, weights=scale)
        yield unet
    finally:
        unet.unload_lora()


def _lora_modules(unet) -> dict[str, tuple[torch.nn.Module, str]]:
    """diffusers key -> (peft layer, 'lora_A' or 'lora_B') for the installed adapter."""
    found = {}
    for name, module in unet.named_modules():
        if hasattr(module, "lora_A") and ADAPTER in getattr(module, "lora_A", {}):
            found[f"unet.{name}.lora_A.weight"] = (module, "lora_A")
            found[f"unet.{name}.lora_B.weight"] = (module, "lora_B")
    return found


class Lora(Method):
    name = "lora"
    init_from = "empty"  # the edit lives in the adapter; the prompt is empty unless --init-text gives one
    conditions_all_rows = True

    def __init__(self, editor: Editor, init: torch.Tensor, weights: dict[str, torch.Tensor], rank: int,
                 alpha: float, targets: tuple[str, ...], init_text: str = "", reverse: str = "swap",
                 scale: float = 1.0):
        if reverse not in REVERSE_MODES:
            raise InvertError(f"unknown LoRA reverse mode '{reverse}' (choose from {', '.join(REVERSE_MODES)})")
        self.init = init.detach()
        self.dtype = editor.dtype
        self.rank, self.alpha, self.targets = rank, float(alpha), tuple(targets)
        self.init_text, self.reverse, self.scale = init_text, reverse, scale
        self.weights = weights  # diffusers key -> fp32 Parameter on the editor's device
        self.swapped: torch.Tensor | None = None  # per step: the pair order exchanged (reverse "swap")
        self._layers: set[torch.nn.Module] = set()  # the installed adapter's peft layers

    @property
    def num_tokens(self) -> int:
        return 0

    @classmethod
    def initialize(cls, editor: Editor, init: TextEncoding, rank: int = 4, alpha: float | None = None,
                   targets: tuple[str, ...] = DEFAULT_TARGETS, reverse: str = "swap", seed: int = 0,
                   init_text: str = "", **_) -> "Lora":
        """peft's initialization (A Kaiming-uniform, B zero: the adapter starts as the identity edit), drawn on
        the CPU from ``seed`` so every device starts from the same adapter."""
        config = lora_config(rank, alpha or rank, targets)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            with installed(editor, config) as unet:
                weights = {key: torch.nn.Parameter(getattr(module, which)[ADAPTER].weight.detach().float().clone())
                           for key, (module, which) in _lora_modules(unet).items()}
        return cls(editor, init.embeds, weights, rank, alpha or rank, targets, init_text, reverse)

    def parameters(self) -> list[torch.Tensor]:
        return list(self.weights.values())

    def text_embeds(self, timesteps: torch.Tensor) -> torch.Tensor:
        return self.init.to(self.dtype).expand(len(timesteps), -1, -1)

    def schedule(self, steps: int, num_train_timesteps: int, seed: int) -> torch.Tensor:
        gen = torch.Generator("cpu").manual_seed(seed + 2)
        self.swapped = torch.rand(steps, generator=gen) < 0.5
        return super().schedule(steps, num_train_timesteps, seed)

    def loss_terms(self, step: int) -> list[tuple[bool, float]]:
        """LoRA Reverse: -Delta must edit after -> before. 'swap' exchanges the pair order (and the adapter's
        sign) at random each step, the paper's recommended variant; 'both' adds the reversed pair's loss to
        every step (twice the cost); 'off' fits the forward edit alone."""
        if self.reverse == "swap":
            return [(bool(self.swapped[step]), 1.0)]
        return [(False, 1.0), (True, 1.0)] if self.reverse == "both" else [(False, 1.0)]

    @contextlib.contextmanager
    def direction(self, reverse: bool):
        """-Delta: every adapted layer's scale negated (peft's ``set_scale`` on the layers found at install, as
        ``unet.set_adapters`` walks the whole UNet and its state dict, twice per step here)."""
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

    @contextlib.contextmanager
    def sampling_context(self, editor: Editor):
        with installed(editor, lora_config(self.rank, self.alpha, self.targets), self.weights, self.scale) as unet:
            self._layers = {module for module, _ in _lora_modules(unet).values()}
            try:
                yield
            finally:
                self._layers = set()

    def tensors(self) -> dict[str, torch.Tensor]:
        return {**{k: w.detach() for k, w in self.weights.items()}, "lora.init": self.init.float()}

    def extra_meta(self) -> dict:
        return {"rank": self.rank, "alpha": self.alpha, "targets": list(self.targets), "reverse": self.reverse}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], meta: dict, editor: Editor, strength: float = 1.0
                     ) -> "Lora":
        extra = meta.get("extra") or {}
        try:
            rank, alpha, targets = int(extra["rank"]), float(extra["alpha"]), tuple(extra["targets"])
        except (KeyError, TypeError, ValueError):
            raise InstructionFileError("its metadata lacks the adapter's rank, alpha and targets") from None
        weights = {k: v for k, v in tensors.items() if k.startswith("unet.")}
        check_adapter(editor, weights, rank)
        init = tensors["lora.init"]
        check_prompt_tensors(editor, init, {})
        params = {k: torch.nn.Parameter(v.to(editor.device, torch.float32), requires_grad=False)
                  for k, v in weights.items()}
        return cls(editor, init.to(editor.device), params, rank, alpha, targets, meta.get("init_text", ""),
                   extra.get("reverse", "off"), scale=strength)

    def hybrid(self, editor: Editor, text: str) -> "Lora":
        embeds = editor.encode_text([f"{self.init_text} {text}".strip()]).embeds
        return Lora(editor, embeds, self.weights, self.rank, self.alpha, self.targets, self.init_text,
                    self.reverse, self.scale)

    @classmethod
    def mix_tensors(cls, tensors: list[dict[str, torch.Tensor]], metas: list[dict], weights: list[float]
                    ) -> tuple[dict[str, torch.Tensor], dict]:
        """Adapters mixed exactly: w1 B1 A1 + w2 B2 A2 = [w1 B1, w2 B2] [A1; A2], one adapter of the summed rank
        (each adapter's alpha / rank scale folded into its B, so the mix has scale 1)."""
        keys = [k for k in tensors[0] if k.startswith("unet.")]
        for other in tensors[1:]:
            if sorted(k for k in other if k.startswith("unet.")) != sorted(keys):
                raise InvertError("cannot mix LoRA instructions with different target modules")
        scales = [float(m["extra"]["alpha"]) / int(m["extra"]["rank"]) for m in metas]
        out = dict(tensors[0])
        for key in keys:
            if key.endswith("lora_A.weight"):
                out[key] = torch.cat([t[key].float() for t in tensors])
            else:
                out[key] = torch.cat([w * s * t[key].float() for w, s, t in zip(weights, scales, tensors)], dim=1)
        rank = sum(int(m["extra"]["rank"]) for m in metas)
        return out, {**metas[0]["extra"], "rank": rank, "alpha": rank}


def check_adapter(editor: Editor, weights: dict[str, torch.Tensor], rank: int) -> None:
    """Refuse stored adapter tensors that do not fit this UNet: every key a Linear of it, with rank ``rank``."""
    if not weights:
        raise InstructionFileError("it holds no LoRA tensors")
    modules = dict(editor.unet.named_modules())
    for key, tensor in weights.items():
        stem, _, which = key.removeprefix("unet.").rpartition(".lora_")
        module = modules.get(stem)
        if not isinstance(module, torch.nn.Linear) or which not in ("A.weight", "B.weight"):
            raise InstructionFileError(f"LoRA tensor '{key}' names no linear layer of this UNet")
        expected = (rank, module.in_features) if which == "A.weight" else (module.out_features, rank)
        if tuple(tensor.shape) != expected:
            raise InstructionFileError(f"LoRA tensor '{key}' has shape {tuple(tensor.shape)}, this UNet needs "
                                       f"{expected}")
