"""Training an edit encoder end to end through the frozen editor, with the fit's own loss.

Each step draws ``edits_per_step`` episodes (an edit, some of its pairs to encode and others to take the loss on),
encodes each into the method's state, and takes the fit's noise loss (:func:`invert.fitting.loop.predict`, the
method's loss terms and its own extra loss) on the other pairs. The state reaches the editor through an ordinary
method object: the encoder's output is copied into the method's parameters, the loss's backward pass leaves its
gradient in their ``.grad``, and that gradient is passed back through the encoder (the chain rule in two halves;
exactly the gradient of one graph). So any method trains as it fits, whatever it hands the denoiser (visii's
tokens, brush's K/V routes, a LoRA's peft layers, which hold the method's Parameter objects themselves).

Episodes, timesteps and noises are drawn from generators keyed by (seed, step, process, episode): a resumed run
draws what the uninterrupted one would have. Under torchrun or ``accelerate launch`` every process draws its own
episodes and the gradients are averaged across processes before each update (data parallel over the encoder's
parameters); process 0 reports and writes."""
from __future__ import annotations

import copy
import dataclasses
import math
import os
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ..backbones import Editor
from ..clip import Clip
from ..errors import InvertError, InvertWarning
from ..fitting.checkpoint import FitDiverged, FitState, FitStopped
from ..fitting.loop import FitData
from ..fitting.losses import direction_of
from ..methods import method_class
from ..methods.base import Method
from ..settings import FitSettings, as_dict
from ..settings.encoder import EncoderSettings
from .data import Episode, PairSets, ToyEdits
from .file import EncoderFile, encoder_info
from .loss import pass_back, state_loss
from .network import EditEncoder, load_state

VALIDATION_EPISODES = 8
STATISTICS_EPISODES = 16  # episodes whose pairs standardize the encoder's inputs
WARMUP = 0.05  # of the steps, the learning rates' linear warm-up; then a cosine decay to FLOOR
FLOOR = 0.1
MAX_GRAD_NORM = 1.0


@dataclass(frozen=True)
class EncoderProgress:
    step: int
    total: int
    loss: float  # the latest step's mean loss per episode
    val: float | None = None  # the latest validation loss


def lr_factor(step: int, total: int) -> float:
    """The learning rates' multiplier at ``step``: linear warm-up, then a cosine decay to FLOOR."""
    warm = max(1, round(WARMUP * total))
    if step < warm:
        return (step + 1) / warm
    t = (step - warm) / max(1, total - warm)
    return FLOOR + (1 - FLOOR) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


class Processes:
    """This process's place among those torchrun or accelerate launch started (RANK, WORLD_SIZE): gradients and
    losses are averaged across them."""

    def __init__(self, device: torch.device):
        self.size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        if self.size > 1 and not torch.distributed.is_initialized():
            torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def mean(self, tensors: list[torch.Tensor]) -> None:
        """Average each tensor (in place) over the processes."""
        if self.size == 1:
            return
        for t in tensors:
            torch.distributed.all_reduce(t)
            t.div_(self.size)


class EncoderTrainer:
    """Trains an :class:`EditEncoder` for ``method`` on ``editor`` from episodes of ``data`` (see
    :mod:`invert.encoder.data`). ``fit_settings`` give the loss (guidance, mse weight, loss target) and the
    basis's default learning rate; ``method_settings`` the method's own options."""

    def __init__(self, editor: Editor, clip: Clip, method: str, fit_settings: FitSettings, method_settings: Any,
                 settings: EncoderSettings, data: ToyEdits | PairSets):
        self.editor, self.clip, self.data = editor, clip, data
        if fit_settings.resolution is None:  # recorded as the size the encoder's instructions were made at
            fit_settings = dataclasses.replace(fit_settings, resolution=editor.resolution)
        self.fit_settings, self.method_settings, self.settings = fit_settings, method_settings, settings
        self.processes = Processes(editor.device)
        cls = method_class(method)
        text = settings.init_text
        self.method: Method = cls.initialize(editor, editor.encode_text([text]), text, method_settings, settings.seed)
        self.method.requires_grad_(True)
        self.method.schedule(settings.steps, editor.num_train_timesteps, settings.seed)  # per-step state (lora's swap)
        torch.manual_seed(settings.seed)
        features = clip.image_features([Image.new("RGB", (fit_settings.resolution,) * 2)]).shape[-1]
        self.features = features
        start, keys = phrase_states(editor, clip, self.method, method_settings, settings)
        base = {n: p.detach() for n, p in self.method.named_parameters()}
        size = settings.basis + (0 if keys is None else len(keys))
        if not size:
            raise InvertError("the encoder has no basis states: give --basis or --basis-vocab")
        self.encoder = EditEncoder(base, features, settings.hidden, size, settings.mixture, start, keys
                                   ).to(editor.device)
        basis_lr = settings.basis_lr if settings.basis_lr is not None else fit_settings.lr / 10
        self.optimizer = torch.optim.AdamW([{"params": self.encoder.trainable(), "lr": settings.lr,
                                             "base_lr": settings.lr},
                                            {"params": self.encoder.basis_parameters(), "lr": basis_lr,
                                             "base_lr": basis_lr, "weight_decay": 0.0}])
        self.info = encoder_info(editor, clip, method, self.method, text,
                                 {**as_dict(fit_settings), **as_dict(method_settings)}, self.encoder)
        self.history: list[float] = []
        self.val_curve: list[tuple[int, float]] = []

    # -- episodes -------------------------------------------------------------------------------------------
    def _rng(self, *key: int) -> np.random.Generator:
        return np.random.default_rng([self.settings.seed, *key])

    def episode(self, step: int, index: int, validation: bool = False) -> Episode:
        """Episode ``index`` of ``step`` (validation episodes are keyed apart and the same at every step)."""
        rng = self._rng(1 if validation else 0, step, self.processes.rank, index)
        encoded = int(rng.integers(1, self.settings.max_pairs + 1))
        return self.data.episode(rng, encoded, self.settings.loss_pairs, self.fit_settings.resolution)

    def pair_features(self, episode: Episode) -> tuple[torch.Tensor, torch.Tensor]:
        return (self.clip.image_features(episode.befores).to(self.editor.device),
                self.clip.image_features(episode.afters).to(self.editor.device))

    def set_input_statistics(self) -> None:
        inputs = []
        for i in range(STATISTICS_EPISODES):
            episode = self.data.episode(self._rng(2, i), self.settings.max_pairs, 0, self.fit_settings.resolution)
            inputs.append(EditEncoder.pair_inputs(*self.pair_features(episode)))
        self.encoder.set_input_statistics(torch.cat(inputs).to(self.editor.device))

    # -- the loss -------------------------------------------------------------------------------------------
    def episode_loss(self, episode: Episode, step: int, key: tuple[int, ...], weight: float,
                     backward: bool = True) -> float:
        """Encode ``episode``'s pairs, take the fit's loss on its other pairs (times ``weight``) and, with
        ``backward``, add its gradient to the encoder's; return the loss."""
        editor, method = self.editor, self.method
        before, after = self.pair_features(episode)
        with torch.enable_grad() if backward else torch.no_grad():
            state = self.encoder(before, after)
        load_state(method, {n: t.detach() for n, t in state.items()})
        rng = self._rng(3, *key)
        data = FitData(editor, episode.loss_befores, episode.loss_afters, int(rng.integers(2**31)))
        rows = len(episode.loss_befores) * self.settings.timesteps
        gen = torch.Generator("cpu").manual_seed(int(rng.integers(2**31)))
        t = torch.randint(0, editor.num_train_timesteps, (rows,), generator=gen).to(editor.device)
        pair = torch.arange(len(episode.loss_befores)).repeat_interleave(self.settings.timesteps).to(editor.device)
        if method.needs_clip(self.method_settings):
            method.set_clip_direction(self.clip, direction_of(before, after))  # the edit's, from the encoded pairs
        total = state_loss(method, data, self.fit_settings, t, pair, step, weight, backward)
        if backward:
            pass_back(method, state)
        return total

    def validation_loss(self) -> float:
        """The loss on fixed validation episodes (their pairs, timesteps and noises the same at every call)."""
        e = VALIDATION_EPISODES
        return sum(self.episode_loss(self.episode(0, i, validation=True), 0, (1, i), 1 / e, backward=False)
                   for i in range(e))

    # -- the loop -------------------------------------------------------------------------------------------
    def state(self, step: int) -> FitState:
        curve = torch.tensor(self.val_curve, dtype=torch.float64).reshape(-1, 2)
        return FitState.capture(step, self.encoder, self.optimizer, self.history, tracked={"val.curve": curve})

    def identity(self) -> dict[str, Any]:
        info = {k: v for k, v in self.info.items() if k != "invert_version"}
        return {"encoder": info, "data": self.data.description,
                "settings": {k: v for k, v in as_dict(self.settings).items() if k not in ("lr", "basis_lr",
                                                                                         "save_every")}}

    def run(self, quiet: bool = False, progress: Callable[[EncoderProgress], None] | None = None,
            resume: FitState | None = None, should_stop: Callable[[], bool] | None = None,
            checkpoint: Callable[[EncoderFile, FitState], None] | None = None) -> EncoderFile:
        """Train; return the encoder file's contents. ``checkpoint(file, state)`` every ``save_every`` steps;
        ``should_stop`` asked after every step (FitStopped then holds the state to resume); a non-finite loss
        raises FitDiverged with the state before that step."""
        s, processes = self.settings, self.processes
        start = 0
        if resume is not None:
            resume.check_identity(self.identity())
            resume.restore_parameters(self.encoder)
            resume.restore_optimizer(self.optimizer, None, self.encoder)
            start, self.history = resume.step, list(resume.history)
            curve = resume.tracked.get("val.curve")
            self.val_curve = [] if curve is None else [(int(a), float(b)) for a, b in curve.tolist()]
        else:
            self.set_input_statistics()
        began = time.perf_counter() - (resume.seconds if resume is not None else 0.0)
        bar = tqdm(total=s.steps, initial=start, desc=f"training a {self.info['method']} encoder",
                   disable=quiet or not processes.main, dynamic_ncols=True)
        with self.method.installed(), bar:
            for step in range(start, s.steps):
                factor = lr_factor(step, s.steps)
                for group in self.optimizer.param_groups:
                    group["lr"] = group["base_lr"] * factor
                self.optimizer.zero_grad(set_to_none=True)
                loss = sum(self.episode_loss(self.episode(step, i), step, (0, step, processes.rank, i),
                                             1 / s.edits_per_step) for i in range(s.edits_per_step))
                grads = [p.grad for p in self.encoder.parameters() if p.grad is not None]
                reduced = torch.tensor([loss], device=self.editor.device)
                processes.mean([*grads, reduced])
                loss = float(reduced)
                if not math.isfinite(loss) or not all(bool(torch.isfinite(g).all()) for g in grads):
                    # nothing is updated yet: the state is the one before this step
                    raise FitDiverged(f"the encoder's loss became {loss} at step {step + 1}; try a lower --lr or "
                                      "--basis-lr", self._stamped(step, began))
                torch.nn.utils.clip_grad_norm_(self.encoder.trainable(), MAX_GRAD_NORM)
                self.optimizer.step()
                self.history.append(loss)
                done = step + 1
                if s.val_every and (done % s.val_every == 0 or done == s.steps):
                    self.val_curve.append((done, self.validation_loss()))
                val = self.val_curve[-1][1] if self.val_curve else None
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", **({"val": f"{val:.4f}"} if val is not None else {}))
                if progress is not None:
                    progress(EncoderProgress(done, s.steps, loss, val))
                if checkpoint is not None and processes.main and s.save_every and done % s.save_every == 0 \
                        and done < s.steps:
                    checkpoint(self.result(done, time.perf_counter() - began), self._stamped(done, began))
                if should_stop is not None and done < s.steps and should_stop():
                    raise FitStopped(f"stopped at step {done} of {s.steps}", self._stamped(done, began))
        return self.result(s.steps, time.perf_counter() - began)

    def _stamped(self, step: int, began: float) -> FitState:
        state = self.state(step)
        state.identity, state.seconds = self.identity(), time.perf_counter() - began
        return state

    def result(self, steps: int, seconds: float) -> EncoderFile:
        """The encoder as a file's contents, with how it was trained."""
        tail = self.history[-50:]
        training = {"data": self.data.description, "steps": steps, "seconds": round(seconds, 1),
                    "settings": as_dict(self.settings), "processes": self.processes.size,
                    "final_loss": float(np.mean(tail)) if tail else None, "validation": self.val_curve}
        encoder = copy.deepcopy(self.encoder).cpu().requires_grad_(False).eval()
        return EncoderFile(encoder, {**self.info, "training": training})


def phrase_states(editor: Editor, clip: Clip, base: Method, method_settings: Any, settings: EncoderSettings
                  ) -> tuple[dict[str, torch.Tensor] | None, torch.Tensor | None]:
    """The ``basis_vocab`` phrases' basis states and keys: each phrase's instruction ('make it PHRASE') as a change
    of ``base``'s state (the method initialized at that text and widened to the base's token positions, less the
    base; {name: (phrases, ...)}) and the phrase's CLIP text feature (phrases, features). Phrases of more tokens
    than the base has, and phrases that change nothing (a method whose state does not depend on its text), give
    none; (None, None) when none is left."""
    from ..fitting.phrases import INSTRUCTION_TEMPLATES
    from ..vocab import load_vocab

    if not settings.basis_vocab:
        return None, None
    cls, own = type(base), dict(base.named_parameters())
    kept, rows, longer = [], [], 0
    phrases = load_vocab(settings.basis_vocab)
    for phrase in phrases:
        text = INSTRUCTION_TEMPLATES[0].format(p=phrase)
        method = cls.initialize(editor, editor.encode_text([text]), text, method_settings, settings.seed)
        if method.num_tokens > base.num_tokens:
            longer += 1
            continue
        state = dict(method.widen(base.num_tokens).named_parameters())
        change = {n: (state[n] - own[n]).detach() for n in own}
        if any(bool(c.any()) for c in change.values()):
            kept.append(phrase)
            rows.append(change)
    if not rows:
        # the option would have no effect at all: said, as the encoder then has only its --basis states
        why = [f"{longer} have more tokens than the base's {base.num_tokens} positions" if longer else "",
               f"{len(phrases) - longer} change nothing (a {base.name} state does not depend on its text)"
               if len(phrases) > longer else ""]
        warnings.warn(InvertWarning(f"--basis-vocab {', '.join(settings.basis_vocab)}: none of its {len(phrases)} "
                                    f"phrases gives a basis state ({'; '.join(w for w in why if w)})"))
        return None, None
    return {n: torch.stack([r[n] for r in rows]) for n in own}, clip.text_features(kept)


__all__ = ["EncoderProgress", "EncoderTrainer", "lr_factor"]
