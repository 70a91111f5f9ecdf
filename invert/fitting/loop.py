"""The fitting loop, for any method: cached encodings of the exemplars, one noise per timestep drawn from the
seed, the method's timestep schedule, pairs cycled, AdamW on the method's parameters only, progress, stop
requests and divergence. Nothing here depends on which method runs.

Each loss term's forward and backward pass run inside the direction it belongs to (a reverse term under the
method's reverse state), so a UNet that recomputes its forward pass during the backward pass (gradient
checkpointing, --low-memory) sees the state the forward pass saw.

The host waits for the device only at a progress refresh: the schedule, noises and alpha-bars live on the
device, each step's loss stays there, and one fused check per refresh finds a non-finite loss or parameter."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import torch
from PIL import Image
from tqdm import tqdm

from ..backbones import Editor
from ..backbones.base import Group, TrainingInputs
from ..backbones.rows import Rows
from ..errors import InvertError
from ..methods.base import Method, Stage
from ..schedules import draw_noises
from ..settings import FitSettings
from .checkpoint import FitDiverged, FitState, FitStopped
from .losses import row_mse


@dataclass(frozen=True)
class FitProgress:
    """What a progress callback is told at each refresh."""

    step: int  # steps done
    total: int
    loss: float  # the latest step's loss per row
    score: float | None = None  # the latest validation score (dB), None before the first or without validation


@dataclass(frozen=True)
class Scoring:
    """A score of the fit's current state (higher is better), taken before the first step, every ``every``
    steps of complete states (see ``Trainer.complete_from``) and after the last. The API builds ``score`` (it
    applies the instruction to held-out pairs); the loop only calls it, with the method installed, and keeps what
    it says."""

    score: Callable[[], float]
    every: int


@dataclass(frozen=True)
class StepInputs:
    t: torch.Tensor  # (rows,) training timestep indices
    timesteps: torch.Tensor  # (rows,) the denoiser's timesteps (the backbone's values of ``t``)
    cond: torch.Tensor  # (rows, ...) the pair's image conditioning
    noisy: torch.Tensor  # (rows, ...) fp32 noised target
    objective: torch.Tensor  # (rows, ...) fp32 what the denoiser should predict
    training: TrainingInputs  # the backbone's view of the same (for its clean estimate)


class FitData:
    """The exemplars encoded once: the befores as the backbone conditions on them, the afters as its targets, the
    pairs the other way round for reverse terms, the unconditional encoding, and one noise per training timestep
    (the official VISII code draws one per timestep, before training)."""

    def __init__(self, editor: Editor, befores: list[Image.Image], afters: list[Image.Image], seed: int):
        self.editor = editor
        self.images = befores, afters
        self.cond = editor.condition(befores)
        self.target = editor.target(afters)
        self._reversed: tuple[torch.Tensor, torch.Tensor] | None = None
        self.uncond = editor.uncond
        self.num_train_timesteps = editor.num_train_timesteps
        self.noises = draw_noises(seed, (1, *self.target.shape[1:]), self.num_train_timesteps, editor.device,
                                  editor.dtype)

    def __len__(self) -> int:
        return len(self.cond)

    def reversed_pairs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The afters' image conditioning and the befores' targets."""
        if self._reversed is None:
            befores, afters = self.images
            self._reversed = self.editor.condition(afters), self.editor.target(befores)
        return self._reversed

    def inputs(self, t: torch.Tensor, pair: int | torch.Tensor, reverse: bool = False) -> StepInputs:
        """The pair's conditioning, its target noised at timesteps ``t`` with their own noises, and what the
        denoiser should predict; ``pair``: one pair for every row, or each row's. ``reverse``: the same with after
        and before exchanged."""
        cond, target = self.reversed_pairs() if reverse else (self.cond, self.target)
        noise = self.noises[t].float()
        x0 = rows_of(target, pair, len(t)).float()
        training = self.editor.training_inputs(x0, noise, t)
        return StepInputs(t, self.editor.timestep_values(t), rows_of(cond, pair, len(t)), training.noisy,
                          training.objective, training)


def rows_of(tensor: torch.Tensor, pair: int | torch.Tensor, rows: int) -> torch.Tensor:
    """``tensor``'s entry of ``pair`` for each of ``rows`` rows: one pair for all, or one per row."""
    if isinstance(pair, int):
        return tensor[pair:pair + 1].expand(rows, *tensor.shape[1:])
    return tensor.index_select(0, pair)


def predict(method: Method, data: FitData, settings: FitSettings, noisy: torch.Tensor, cond: torch.Tensor,
            timesteps: torch.Tensor, reverse: bool = False) -> torch.Tensor:
    """The prediction the loss compares: the instruction's rows (``cond`` loss), or the backbone's guided
    combination of its guidance groups (``cfg``, as the official VISII code: IP2P's text, image-only and
    unconditional rows). Unless the method changes every row (an adapter), the groups without the instruction do
    not depend on the learned state and run without autograd; an adapter's groups run in one call. The result
    equals the pipeline's batched guidance prediction."""
    editor = data.editor

    def call(groups: list[Group]) -> torch.Tensor:
        rows = Rows.of(groups, timesteps)
        c = method.conditioning(rows, data.uncond, reverse)
        return editor.predict(noisy, cond, c, rows, groups, guidance=settings.guidance).float()

    groups = editor.guidance_groups()
    if settings.loss_target == "cond" or len(groups) == 1:
        return call(groups[:1])
    if method.conditions_all_rows:  # autograd runs through every row anyway: one call does it with less overhead
        return editor.combine(list(call(groups).chunk(len(groups))), settings.guidance, settings.image_guidance)
    text = call(groups[:1])
    with torch.no_grad():
        others = call(groups[1:]).chunk(len(groups) - 1)
    return editor.combine([text, *others], settings.guidance, settings.image_guidance)


class Trainer:
    """Runs a method's optimization on one set of exemplars."""

    def __init__(self, method: Method, data: FitData, settings: FitSettings):
        self.method, self.data, self.settings = method, data, settings
        self.schedule = method.schedule(settings.steps, data.num_train_timesteps, settings.seed).to(data.editor.device)
        self.total = len(self.schedule)
        self.stages = method.stages(self.total)
        # A state is complete once every stage has trained: before a stage's first step its parameters are still
        # at their init (a sequential fit's later time parts). Only the start and complete states are scored and
        # kept, so --keep never keeps a half-trained instruction.
        self.complete_from = self.stages[-1].start if self.stages else 0
        self.best_step: int | None = None  # --keep best-mse: the step whose state was kept
        self.kept_step: int | None = None  # a --keep rule by the validation score: the step whose state was kept
        self.stopped_at: int | None = None  # --patience: the step the fit stopped at, when it stopped early
        self.scores: BestScore | None = None  # with scoring: the score curve and the best-scoring state

    def pair(self, step: int) -> int | torch.Tensor:
        """Step ``step``'s pair: cycled by step (within each part of a sequential fit), or, as the official VISII
        code, timestep t's is pair t mod n (one per row)."""
        if self.settings.pair_order == "timestep":
            return self.schedule[step] % len(self.data)
        return (step % max(1, self.settings.steps)) % len(self.data)

    def step_loss(self, step: int, scale: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Run step ``step``'s forward and backward passes (gradients accumulate in the parameters); return its
        loss and the noise MSE of its first term (on the device, detached). ``scale`` is the loss scaler's."""
        method, data, s = self.method, self.data, self.settings
        t, pair = self.schedule[step], self.pair(step)
        total = torch.zeros((), device=data.editor.device)
        mse = None
        for reverse, weight in method.loss_terms(step):
            with method.direction(reverse):
                x = data.inputs(t, pair, reverse)
                pred = predict(method, data, s, x.noisy, x.cond, x.timesteps, reverse)
                rows = row_mse(pred, x.objective)
                # The sum over rows: each time part's gradient is its own loss's.
                loss = weight * s.mse_weight * rows.sum()
                scale(loss).backward()
            total = total + loss.detach()
            mse = rows.detach().mean() if mse is None else mse
        if s.reverse and s.cycle_weight:
            loss = s.cycle_weight * self.cycle(t, pair)
            scale(loss).backward()
            total = total + loss.detach()
        extra = method.extra_loss()
        if extra is not None:
            scale(extra).backward()
            total = total + extra.detach()
        return total, mse

    def cycle(self, t: torch.Tensor, pair: int) -> torch.Tensor:
        """Cycle edit consistency in one denoising step: the forward edit's estimate of the after, used as the
        reverse edit's image conditioning, must lead the reverse edit back to the before. Each row is weighted
        by its share of signal: at high noise a one-step estimate is a blur that says nothing."""
        method, data, s = self.method, self.data, self.settings
        editor = data.editor
        x = data.inputs(t, pair)
        with method.direction(False):
            after = editor.clean_estimate(predict(method, data, s, x.noisy, x.cond, x.timesteps), x.training, t)
        r = data.inputs(t, pair, reverse=True)
        cond = editor.reconditioned(after).to(data.cond.dtype)  # target -> conditioning space
        with method.direction(True):
            back = editor.clean_estimate(predict(method, data, s, r.noisy, cond, r.timesteps, reverse=True),
                                         r.training, t)
        before = rows_of(data.reversed_pairs()[1], pair, len(t)).float()
        return (x.training.signal.flatten() * row_mse(back, before)).sum()

    def run(self, quiet: bool = False, progress: Callable[[FitProgress], None] | None = None,
            resume: FitState | None = None, should_stop: Callable[[], bool] | None = None,
            sync_at: Callable[[int], bool] | None = None, scoring: Scoring | None = None) -> list[float]:
        """Optimize the method in place; return the loss history (per row, one per step).

        ``resume`` continues from a saved state. ``should_stop`` is asked after every step; when it says yes,
        FitStopped carries the state to resume from. A non-finite loss or gradient raises FitDiverged with the
        last state checked good. ``progress`` is called at every refresh; ``sync_at(steps_done)`` asks for one.
        ``scoring``: the score curve is kept in ``self.scores``; a --keep rule by the score (KEEPS_BY_SCORE) leaves
        the state it chooses, the start a candidate, in the method (its step in ``self.kept_step``). With
        --patience the loop ends once that many scores in a row have not beaten the best (at ``self.stopped_at``);
        the history then holds the steps done."""
        method, data, s = self.method, self.data, self.settings
        if data.editor.denoiser.is_gradient_checkpointing and s.reverse and s.cycle_weight \
                and not method.direction_in_conditioning:
            raise InvertError(f"--low-memory cannot fit a {method.name} instruction with --reverse and a cycle term: "
                              "its reverse direction is UNet state that the recomputed forward pass would not see; "
                              "drop --low-memory or use --cycle-weight 0")
        # Taken before a resumed state is loaded, so a resumed fit clips as the uninterrupted one.
        clip = GradientClip.of(s.grad_clip if s.grad_clip != "auto" else method.default_grad_clip, method, data.uncond)
        best = BestMse(method) if s.keep == "best-mse" else None
        scores = self.scores = BestScore(method, s.keep in KEEPS_BY_SCORE) if scoring is not None else None
        start = resume.step if resume is not None else 0
        if resume is not None:
            resume.restore_parameters(method)
            if best is not None:
                best.load(resume.tracked)
            if scores is not None:
                scores.load(resume.tracked)
        history: list[float] = list(resume.history) if resume is not None else []
        device = data.editor.device
        losses = torch.zeros(self.total, device=device)
        # On the CPU the host is the device: check every step, before its update, so the parameters are still the
        # last good ones. Elsewhere check every 10 steps and keep the state of the last check to return to.
        every = 1 if device.type == "cpu" else 10
        bar = tqdm(total=self.total, initial=start, desc=f"fitting {method.name}", disable=quiet, dynamic_ncols=True)
        with method.installed(), contextlib.closing(bar):
            if scores is not None and resume is None:  # the start is a candidate: a fit never ends below it
                scores.update(scoring.score(), 0)
            for stage in self.stages:
                if stage.stop <= start:
                    continue
                opt = make_optimizer(s.optimizer, stage.parameters, s.lr)
                # fp16: scale the loss so that small gradients do not flush to zero in the UNet's backward pass
                # (measured on the tiny model: 0.03% of the gradient entries without it); bf16 and fp32 need none.
                scaler = torch.amp.GradScaler(device.type, init_scale=2.0**10,
                                              enabled=data.editor.dtype == torch.float16)
                first = max(start, stage.start)
                if resume is not None and stage.start < start:  # resumed inside this stage (at its start: fresh)
                    resume.restore_optimizer(opt, scaler, method)
                def state(done: int, opt=opt, scaler=scaler) -> FitState:  # this stage's optimizer and scaler
                    tracked = {**(best.state() if best else {}), **(scores.state() if scores else {})}
                    return FitState.capture(done, method, opt, history, scaler, tracked)

                good = first, (_DeviceCopy(opt, scaler) if every > 1 else None)
                for step in range(first, stage.stop):
                    opt.zero_grad(set_to_none=True)
                    loss, mse = self.step_loss(step, scaler.scale)
                    losses[step] = loss / self.schedule.shape[1]
                    if every == 1 and not _finite([losses[step:step + 1]] + _grads(stage)):
                        raise _diverged(losses, step, step, state(step))
                    _update(opt, scaler, stage, clip)
                    complete = step + 1 > self.complete_from
                    if best is not None and complete:
                        best.update(mse, step + 1)
                    # asked after the step's update and again after the progress callback (which may ask to stop)
                    can_stop = should_stop is not None and step + 1 < self.total
                    stop = can_stop and should_stop()
                    scored = scoring is not None and (step + 1 == self.total or complete and
                                                      (step + 1 - self.complete_from) % scoring.every == 0)
                    if not (every == 1 or (step + 1) % every == 0 or step + 1 == stage.stop or stop or scored
                            or (sync_at is not None and sync_at(step + 1))):
                        continue
                    if every > 1:
                        if not _finite([losses[good[0]:step + 1]] + list(stage.parameters)):
                            good[1].restore()
                            history += losses[len(history):good[0]].tolist()
                            raise _diverged(losses, good[0], step, state(good[0]))
                        good = step + 1, _DeviceCopy(opt, scaler)
                    history += losses[len(history):step + 1].tolist()
                    if scored:
                        scores.update(scoring.score(), step + 1)
                    bar.update(step + 1 - bar.n)
                    latest = scores.latest if scores is not None else None
                    bar.set_postfix(loss=f"{history[-1]:.4f}", **({"val": f"{latest:.2f}dB"} if latest is not None
                                                                  else {}))
                    if progress is not None:
                        progress(FitProgress(step + 1, self.total, history[-1], latest))
                    if scored and s.patience and step + 1 < self.total and scores.scores_since_best >= s.patience:
                        self.stopped_at = step + 1
                        break
                    if stop or (can_stop and should_stop()):
                        raise FitStopped(f"stopped at step {step + 1} of {self.total}", state(step + 1))
                if self.stopped_at is not None:
                    break
        if best is not None:
            self.best_step = best.restore()
        if scores is not None and s.keep in KEEPS_BY_SCORE:
            self.kept_step = scores.keep(s.keep)
        return history


def _grads(stage: Stage) -> list[torch.Tensor]:
    return [p.grad for p in stage.parameters if p.grad is not None]


def _finite(tensors: list[torch.Tensor]) -> bool:
    """One host sync for the lot: a sum is NaN or inf when any entry is (and for a finite tensor it may only
    overflow to inf, which is as good a reason to stop)."""
    return bool(torch.isfinite(torch.stack([t.detach().float().sum() for t in tensors])).all())


def _update(opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler, stage: Stage, clip: "GradientClip") -> None:
    scaler.unscale_(opt)
    clip([p for p in stage.parameters if p.grad is not None])
    scaler.step(opt)  # with loss scaling an overflowed gradient skips the step and lowers the scale
    scaler.update()


# The official VISII code's loss scale: Accelerator(mixed_precision="fp16") on a GPU multiplies the loss by its
# GradScaler's initial 65,536 (accelerate's default) and, its optimizer never prepared, never unscales or updates
# it (invert/bench/visii_official.py cites the lines). A power of two: scaling fp32 gradients by it is exact.
OFFICIAL_LOSS_SCALE = 2.0**16


@dataclass(frozen=True)
class GradientClip:
    """Gradient clipping by value, by rule (--grad-clip): ``official`` multiplies the gradients by the official
    code's loss scale, then clips at the signed max of its initial prompt batch; ``abs`` clips the unscaled
    gradients at the initial parameters' largest |entry|; ``none``."""

    value: float | None = None
    scale: float = 1.0

    @classmethod
    def of(cls, rule: str, method: Method, uncond: torch.Tensor) -> "GradientClip":
        if rule == "official":
            return cls(float(method.official_clip_reference(uncond).max()), OFFICIAL_LOSS_SCALE)
        if rule == "abs":
            return cls(max((float(p.detach().abs().max()) for p in method.parameters()), default=0.0))
        return cls()

    def __call__(self, params: list[torch.Tensor]) -> None:
        if self.value is None or not params:
            return
        if self.scale != 1.0:
            torch._foreach_mul_([p.grad for p in params], self.scale)
        torch.nn.utils.clip_grad_value_(params, self.value)


def make_optimizer(name: str, params: list[torch.Tensor], lr: float) -> torch.optim.Optimizer:
    """AdamW (torch's defaults: betas 0.9/0.999, eps 1e-8, weight decay 0.01), or bitsandbytes' AdamW8bit with
    the same hyper-parameters, as the official VISII code."""
    if name == "adamw8bit":
        try:
            import bitsandbytes
        except ImportError:
            raise InvertError("--optimizer adamw8bit needs bitsandbytes (pip install bitsandbytes), or use --optimizer "
                              "adamw (the same hyper-parameters, fp32 state)") from None
        return bitsandbytes.optim.AdamW8bit(params, lr=lr)
    return torch.optim.AdamW(params, lr=lr)


class BestMse:
    """--keep best-mse, the official VISII code's prompt_embeds_best: the state after the step whose noise MSE
    (before its update) was the lowest so far, ties to the later step, from a threshold of 100 (as there).
    Tracked on the device: a step costs one masked copy of the parameters and no host sync."""

    THRESHOLD = 100.0

    def __init__(self, method: Method):
        self.params = dict(method.named_parameters())
        device = next(iter(self.params.values())).device
        self.saved = {n: p.detach().clone() for n, p in self.params.items()}
        self.mse = torch.tensor(self.THRESHOLD, device=device)
        self.step = torch.tensor(-1, device=device)

    def update(self, mse: torch.Tensor, steps_done: int) -> None:
        better = mse <= self.mse
        self.mse = torch.where(better, mse, self.mse)
        self.step = torch.where(better, torch.tensor(steps_done, device=self.step.device), self.step)
        for name, p in self.params.items():
            self.saved[name] = torch.where(better, p.detach(), self.saved[name])

    def state(self) -> dict[str, torch.Tensor]:
        return {"mse": self.mse.cpu(), "step": self.step.cpu(),
                **{f"param.{n}": t.cpu() for n, t in self.saved.items()}}

    def load(self, state: dict[str, torch.Tensor]) -> None:
        device = self.mse.device
        self.mse, self.step = state["mse"].to(device), state["step"].to(device)
        self.saved = {n: state[f"param.{n}"].to(device) for n in self.saved}

    def restore(self) -> int | None:
        """Put the best state into the parameters; return its step (None: no step beat the threshold)."""
        step = int(self.step)
        if step < 0:
            return None
        with torch.no_grad():
            for name, p in self.params.items():
                p.copy_(self.saved[name])
        return step


# The --keep rules that choose by the validation score.
KEEPS_BY_SCORE = ("last-unless-worse", "best")
# last-unless-worse: an earlier state replaces the last only when it scored this much higher. The score of two
# held-out pairs moves by about a dB between states of one fit that edit new scenes alike (validation.FALL_MARGIN);
# on the toy world's validation scenes (18 fits: 6 edits x 3 methods) this rule kept states scoring 23.26 dB on
# average, the highest held-out score's (--keep best) 23.06 and the last's 23.10 (benchmarks/keep_rules.py,
# examples/toy/keep_rules.json).
KEEP_MARGIN = 1.0


class BestScore:
    """The validation score curve and, for the --keep rules that use it, the state with the highest score so far,
    the start (step 0) included; a later state must score strictly higher, so a fit that never beats its start
    keeps it. Its state goes into a checkpoint's ``tracked`` tensors (prefix ``val.``), so a resumed fit keeps
    the same."""

    def __init__(self, method: Method, keep_state: bool):
        self.params = dict(method.named_parameters()) if keep_state else {}
        self.saved = {n: p.detach().clone() for n, p in self.params.items()}
        self.curve: list[tuple[int, float]] = []  # (steps done, score)
        self.best_step: int | None = None
        self.best = float("-inf")

    @property
    def latest(self) -> float | None:
        return self.curve[-1][1] if self.curve else None

    @property
    def scores_since_best(self) -> int:
        """Scores taken after the best one (all of them while none is finite)."""
        steps = [step for step, _ in self.curve]
        return len(steps) - 1 - steps.index(self.best_step) if self.best_step in steps else len(steps)

    def update(self, score: float, steps_done: int) -> None:
        self.curve.append((steps_done, score))
        if score > self.best:  # NaN never is
            self.best, self.best_step = score, steps_done
            for name, p in self.params.items():
                self.saved[name].copy_(p.detach())

    def state(self) -> dict[str, torch.Tensor]:
        curve = torch.tensor(self.curve, dtype=torch.float64).reshape(-1, 2)
        return {"val.curve": curve, "val.best": torch.tensor([self.best, -1 if self.best_step is None else
                                                               self.best_step], dtype=torch.float64),
                **{f"val.param.{n}": t.cpu() for n, t in self.saved.items()}}

    def load(self, state: dict[str, torch.Tensor]) -> None:
        self.curve = [(int(step), float(score)) for step, score in state["val.curve"].tolist()]
        best, step = state["val.best"].tolist()
        self.best, self.best_step = best, None if step < 0 else int(step)
        for name in self.saved:
            self.saved[name].copy_(state[f"val.param.{name}"])

    def keep(self, rule: str) -> int | None:
        """Leave the state ``rule`` keeps in the parameters and return its step: "best", the best-scoring one;
        "last-unless-worse", the last (the parameters as they are, the last state scored) unless the best scored
        more than KEEP_MARGIN above it."""
        if rule == "last-unless-worse" and self.curve and not self.best > self.curve[-1][1] + KEEP_MARGIN:
            return self.curve[-1][0]
        with torch.no_grad():
            for name, p in self.params.items():
                p.copy_(self.saved[name])
        return self.best_step


def _diverged(losses: torch.Tensor, first: int, step: int, state: FitState) -> FitDiverged:
    window = losses[first:step + 1]
    bad = torch.nonzero(~torch.isfinite(window)).flatten()
    what = f"the loss became {window[bad[0]].item()} at step {first + int(bad[0]) + 1}" if len(bad) else \
        f"a gradient became NaN or inf at step {step + 1}"
    # With finite gradients and a finite --lr AdamW's update is bounded: a non-finite value comes from the loss.
    return FitDiverged(f"{what}; try a lower --lr or --dtype fp32", state)


class _DeviceCopy:
    """The parameters and optimizer state of a stage at a check, kept on the device to return to."""

    def __init__(self, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler):
        self.opt, self.scaler = opt, scaler
        self.params = [p.detach().clone() for group in opt.param_groups for p in group["params"]]
        self.state = {id(p): {k: v.clone() if torch.is_tensor(v) else v for k, v in st.items()}
                      for p, st in opt.state.items()}
        self.scale = scaler.state_dict()

    def restore(self) -> None:
        with torch.no_grad():
            for p, saved in zip((p for group in self.opt.param_groups for p in group["params"]), self.params):
                p.copy_(saved)
        for p in list(self.opt.state):
            if id(p) in self.state:
                self.opt.state[p] = self.state[id(p)]
        if self.scale:
            self.scaler.load_state_dict(self.scale)


__all__ = ["KEEPS_BY_SCORE", "KEEP_MARGIN", "BestScore", "FitData", "FitProgress", "Scoring", "StepInputs",
           "Trainer", "predict"]
