"""The generic fitting loop: cached encodings, one noise per timestep drawn from the seed, every timestep
used once in shuffled order, pairs cycled, AdamW on the method's parameters only, progress and checkpoints."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, NamedTuple

import torch
from diffusers import DDPMScheduler
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from tqdm import tqdm

from . import __version__
from .checkpoint import FitDiverged, FitState, FitStopped
from .clip import Clip
from .editor import Editor
from .errors import InvertError
from .grid import thumbnail_tensor
from .instruction import Instruction
from .methods import METHODS
from .methods.base import Method
from .methods.reverse import TwoWay


@dataclass
class FitOptions:
    """Settings of one fit. Defaults follow the official VISII code."""

    steps: int = 1000
    lr: float = 1e-3
    seed: int = 0
    resolution: int | None = None  # None: the base model's own (Editor.resolution)
    loss_target: str = "cfg"  # "cfg": the guidance-combined prediction (official VISII); "cond": text row only
    guidance: float = 7.5
    image_guidance: float = 1.5
    mse_weight: float = 4.0
    clip_weight: float = 0.1
    clip_clamp: float = 0.5
    init_text: str | None = None
    vocab: tuple[str, ...] | None = None  # None: the base model's own (vocab.model_vocab)
    top: int = 5  # phrase initialization (brush): top phrases per image, threshold, relative mode, template
    threshold: float = 0.15
    relative_threshold: bool = False
    template: str = "turn {p_x} into {p_y}"
    reverse: bool = False  # also learn the inverse instruction (after -> before), with a cycle term
    cycle_weight: float = 1.0
    method_options: dict = field(default_factory=dict)


def draw_noises(seed: int, shape: tuple[int, ...], count: int, device: torch.device, dtype: torch.dtype
                ) -> torch.Tensor:
    """``count`` noises drawn in order from a CPU generator: every device gets the same tensors, and sampling
    with ``torch.Generator().manual_seed(seed)`` draws the same ones (initial latent first, then each step's)."""
    gen = torch.Generator("cpu").manual_seed(seed)
    return torch.cat([randn_tensor(shape, generator=gen, device=device, dtype=dtype) for _ in range(count)])


def timestep_order(steps: int, num_train_timesteps: int, seed: int) -> torch.Tensor:
    """Every timestep once in a shuffled order, reshuffled for each further pass."""
    gen = torch.Generator("cpu").manual_seed(seed + 1)
    passes = -(-steps // num_train_timesteps) if steps else 0
    order = [torch.randperm(num_train_timesteps, generator=gen) for _ in range(passes)]
    return torch.cat(order)[:steps] if order else torch.zeros(0, dtype=torch.long)


def clip_direction(clip: Clip, befores: list[Image.Image], afters: list[Image.Image]) -> torch.Tensor:
    """Normalized (mean after - mean before) projected CLIP image embedding."""
    direction = clip.image_features(afters).mean(0) - clip.image_features(befores).mean(0)
    return torch.nn.functional.normalize(direction, dim=-1)


class StepInputs(NamedTuple):
    t: torch.Tensor  # (rows,) timesteps
    cond: torch.Tensor  # (1, 4, h, w) the pair's image conditioning
    noisy: torch.Tensor  # (rows, 4, h, w) fp32 noised target latents
    objective: torch.Tensor  # (rows, 4, h, w) fp32 what the UNet should predict


class Fitter:
    """Holds the cached encodings of one set of exemplars and runs a method's optimization on them."""

    def __init__(self, editor: Editor, befores: list[Image.Image], afters: list[Image.Image], options: FitOptions):
        self.editor, self.options = editor, options
        self.cond = editor.condition_latents(befores)  # (n, 4, h, w), unscaled mode: IP2P's image conditioning
        self.target = editor.target_latents(afters)
        self.images = befores, afters
        self._reversed: tuple[torch.Tensor, torch.Tensor] | None = None
        self.uncond = editor.encode_text([""]).embeds
        ddpm = DDPMScheduler.from_config(editor.scheduler.config)
        self.alphas = ddpm.alphas_cumprod.to(editor.device)
        self.prediction_type = ddpm.config.prediction_type
        self.num_train_timesteps = ddpm.config.num_train_timesteps
        self.noises = draw_noises(options.seed, (1, *self.target.shape[1:]), self.num_train_timesteps,
                                  editor.device, editor.dtype)
        self.order: torch.Tensor | None = None

    def schedule(self, method: Method) -> None:
        """Fix the (steps, rows) timesteps of ``method``'s run."""
        self.order = method.schedule(self.options.steps, self.num_train_timesteps, self.options.seed)

    def reversed_pairs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The pairs the other way round: the afters' image conditioning and the befores' target latents."""
        if self._reversed is None:
            befores, afters = self.images
            self._reversed = self.editor.condition_latents(afters), self.editor.target_latents(befores)
        return self._reversed

    def predict(self, method: Method, latents: torch.Tensor, cond: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The noise prediction the loss compares: the text rows, or the three-way guided combination.

        Unless the method changes every row (an adapter), the image-only and unconditional rows do not depend
        on the learned parameters and run without autograd; the result equals the pipeline's batched three-way
        prediction."""
        unet, dtype = self.editor.unet, self.editor.dtype
        if self.options.loss_target == "cfg":
            grad = torch.enable_grad() if method.conditions_all_rows else torch.no_grad()
            with grad, method.conditioning_rows(False):
                zeros = torch.zeros_like(cond)
                both = unet(torch.cat([torch.cat([latents, cond], 1), torch.cat([latents, zeros], 1)]).to(dtype),
                            torch.cat([t, t]), encoder_hidden_states=self.uncond.expand(2 * len(t), -1, -1)).sample
                image, uncond = both.float().chunk(2)
        # The rows with autograd run last: gradient checkpointing (--low-memory) reruns their forward in the
        # backward pass, and attention processors (brush) read the state of the latest UNet call.
        with method.conditioning_rows(True):
            text = unet(torch.cat([latents, cond], 1).to(dtype), t, encoder_hidden_states=method.text_embeds(t)).sample
        if self.options.loss_target == "cond":
            return text.float()
        o = self.options
        return uncond + o.guidance * (text.float() - image) + o.image_guidance * (image - uncond)

    def objective(self, noise: torch.Tensor, latents: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """What the UNet predicts, as diffusers' training scripts define it per ``prediction_type``."""
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "v_prediction":
            return a.sqrt() * noise - (1 - a).sqrt() * latents
        raise InvertError(f"unsupported scheduler prediction_type {self.prediction_type!r}")

    def x0(self, pred: torch.Tensor, noisy: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """The one-step estimate of the clean latents from a prediction of ``objective``'s kind."""
        if self.prediction_type == "epsilon":
            return (noisy - (1 - a).sqrt() * pred) / a.sqrt()
        return a.sqrt() * noisy - (1 - a).sqrt() * pred

    def pair_index(self, step: int) -> int:
        return (step % self.options.steps) % len(self.cond)  # cycled within each part of a sequential schedule

    def step_inputs(self, method: Method, step: int, reverse: bool = False) -> StepInputs:
        """Step ``step``'s timesteps, its pair's conditioning, the noised target and what the UNet should predict;
        ``reverse``: the same pair, timesteps and noise with after and before exchanged."""
        if self.order is None:
            self.schedule(method)
        t = self.order[step].to(self.editor.device)
        pair = self.pair_index(step)
        noise = self.noises[t].float()
        a = self.alphas[t].view(-1, 1, 1, 1)
        cond, target = self.reversed_pairs() if reverse else (self.cond, self.target)
        # DDPM forward noising (equal to Euler's noising followed by its input scaling), computed directly:
        # a per-step scale_model_input on an Euler scheduler would reuse the first step's sigma.
        target = target[pair:pair + 1].float()
        noisy = a.sqrt() * target + (1 - a).sqrt() * noise
        return StepInputs(t, cond[pair:pair + 1], noisy, self.objective(noise, target, a))

    def loss(self, method: Method, step: int) -> tuple[torch.Tensor, float]:
        """The loss of one step: the sum over its rows (so each time part's gradient is its own loss's) of each
        of the method's terms, plus the cycle term with --reverse."""
        loss, mses, forward = 0.0, [], None
        for reverse, weight in method.loss_terms(step):
            s = self.step_inputs(method, step, reverse)
            with method.direction(reverse):
                pred = self.predict(method, s.noisy, s.cond.expand(len(s.t), -1, -1, -1), s.t)
            mse = torch.nn.functional.mse_loss(pred, s.objective, reduction="none").flatten(1).mean(1)
            loss = loss + weight * self.options.mse_weight * mse.sum()
            mses.append(mse.mean().item())
            if not reverse:
                forward = (s, pred)
        if self.options.reverse and self.options.cycle_weight:
            loss = loss + self.options.cycle_weight * self.cycle(method, step, forward)
        extra = method.extra_loss()
        if extra is not None:
            loss = loss + extra
        return loss, sum(mses) / len(mses)

    def cycle(self, method: Method, step: int, forward: tuple[StepInputs, torch.Tensor] | None) -> torch.Tensor:
        """Cycle edit consistency in one denoising step: the forward edit's estimate of the after, used as the
        reverse edit's image conditioning, must lead the reverse edit back to the before.

        Each row is weighted by its alpha-bar: at high noise a one-step estimate is a blur that says nothing."""
        if forward is None:
            s = self.step_inputs(method, step)
            with method.direction(False):
                pred = self.predict(method, s.noisy, s.cond.expand(len(s.t), -1, -1, -1), s.t)
        else:
            s, pred = forward
        a = self.alphas[s.t].view(-1, 1, 1, 1)
        after = self.x0(pred, s.noisy, a)
        r = self.step_inputs(method, step, reverse=True)
        cond = (after / self.editor.vae.config.scaling_factor).to(self.cond.dtype)  # target -> conditioning scale
        with method.direction(True):
            back = self.x0(self.predict(method, r.noisy, cond, r.t), r.noisy, a)
        pair = self.pair_index(step)
        before = self.reversed_pairs()[1][pair:pair + 1].float()
        per_row = (back - before).pow(2).flatten(1).mean(1)
        return (a.flatten() * per_row).sum()

    def run(self, method: Method, quiet: bool = False, on_step: Callable[[int, float], None] | None = None,
            resume: FitState | None = None, should_stop: Callable[[], bool] | None = None,
            ) -> tuple[float | None, list[float]]:
        """Optimize ``method`` in place; return the final loss and the loss history.

        ``resume`` continues from a saved state. ``should_stop`` is asked after every step; when it says yes,
        FitStopped carries the state to resume from. A non-finite loss or gradient raises FitDiverged with
        the state before that step."""
        self.schedule(method)
        params = method.parameters()
        opt = torch.optim.AdamW(params, lr=self.options.lr)
        # As the official VISII code: clip gradients by value at the initial parameters' largest entry
        # (taken before a resumed state is loaded, so a resumed fit clips as the uninterrupted one).
        clip_value = max(float(p.detach().abs().max()) for p in params) if params else 0.0
        # fp16: scale the loss so that small gradients do not flush to zero in the UNet's backward pass (measured
        # on the tiny model: 0.03% of the embedding's gradient entries without it); bf16 and fp32 need none.
        scaler = torch.amp.GradScaler(self.editor.device.type, init_scale=2.0**10,
                                      enabled=self.editor.dtype == torch.float16)
        history: list[float] = resume.restore(params, opt, scaler) if resume is not None else []
        start = resume.step if resume is not None else 0
        bar = tqdm(range(start, len(self.order)), initial=start, total=len(self.order), desc=f"fitting {method.name}",
                   disable=quiet, dynamic_ncols=True)
        with method.sampling_context(self.editor):
            for step in bar:
                opt.zero_grad(set_to_none=True)
                loss, mse = self.loss(method, step)
                if not torch.isfinite(loss):
                    raise _diverged(f"the loss became {loss.item()}", step,
                                    FitState.capture(step, params, opt, history, scaler))
                scaler.scale(loss).backward()
                for p in params:  # a part not in this step's batch gets an all-zero gradient: leave it untouched
                    if p.grad is not None and not p.grad.any():
                        p.grad = None
                scaler.unscale_(opt)
                # With loss scaling an overflowed gradient is expected: the scaler skips that step and lowers the scale.
                if not scaler.is_enabled() and any(p.grad is not None and not torch.isfinite(p.grad).all()
                                                   for p in params):
                    raise _diverged("a gradient became NaN or inf", step,
                                    FitState.capture(step, params, opt, history, scaler))
                torch.nn.utils.clip_grad_value_([p for p in params if p.grad is not None], clip_value)
                scaler.step(opt)
                scaler.update()
                history.append(loss.item() / self.order.shape[1])  # per row, comparable across schedules
                bar.set_postfix(loss=f"{history[-1]:.4f}", mse=f"{mse:.4f}")
                if on_step is not None:
                    on_step(step + 1, history[-1])
                if should_stop is not None and should_stop() and step + 1 < len(self.order):
                    raise FitStopped(f"stopped at step {step + 1} of {len(self.order)}",
                                     FitState.capture(step + 1, params, opt, history, scaler))
        return (history[-1] if history else None), history


def _diverged(what: str, step: int, state: FitState) -> FitDiverged:
    # Raised before opt.step, so the parameters are still the last good ones. With finite gradients and a
    # finite --lr AdamW's update is bounded, so the parameters need no check of their own.
    return FitDiverged(f"{what} at step {step + 1}; try a lower --lr or --dtype fp32", state)


def make_instruction(method: Method, editor: Editor, options: FitOptions, *, clip_name: str, init_text: str,
                     final_loss: float | None, seconds: float, exemplars: list[dict], steps_done: int,
                     stored: dict[str, torch.Tensor], phrases=None) -> Instruction:
    meta = {
        "base_model": editor.model_id,
        "clip_model": clip_name,
        "model_fingerprint": editor.fingerprint,
        "init_text": init_text,
        "num_tokens": method.num_tokens,
        "guidance": {"text": options.guidance, "image": options.image_guidance},
        "resolution": options.resolution,
        "seed": options.seed,
        "noise_seed": options.seed,
        "steps": steps_done,
        "final_loss": None if final_loss is None else f"{final_loss:.6g}",
        "fit_seconds": f"{seconds:.2f}",
        "exemplars": exemplars,
        "invert_version": __version__,
        "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(options).items()},
        "extra": method.extra_meta() or None,
        "phrases": None if phrases is None else {"p_x": phrases.p_x, "p_y": phrases.p_y, "score_x": phrases.score_x,
                                                  "score_y": phrases.score_y, "candidates": phrases.candidates},
    }
    return Instruction(method.name, {**method.tensors(), **stored}, meta)


def _init_text(cls: type[Method], options: FitOptions, clip: Clip | None, editor: Editor,
               befores: list[Image.Image], afters: list[Image.Image]) -> tuple[str, object | None]:
    """The init text (and, for phrase initialization, the phrases found): --init-text, else the method's way."""
    from .phrases import caption, unique_phrases
    from invert.vocab import load_vocab, model_vocab

    if options.init_text is not None:
        return options.init_text, None
    if cls.init_from == "empty":
        return "", None
    if clip is None:
        raise InvertError("no --init-text and no CLIP model to initialize from")
    vocab = load_vocab(options.vocab or model_vocab(editor.model_id))
    if cls.init_from == "phrases":
        phrases = unique_phrases(clip, befores, afters, vocab, options.top, options.threshold,
                                 options.relative_threshold, options.template)
        return phrases.text, phrases
    return caption(clip, afters, vocab), None


def fit_images(editor: Editor, befores: list[Image.Image], afters: list[Image.Image], method: str = "visii",
               options: FitOptions | None = None, clip: Clip | None = None, exemplars: list[dict] | None = None,
               quiet: bool = False, checkpoint: Callable[[Instruction, int], None] | None = None,
               save_every: int = 0, resume: FitState | None = None, should_stop: Callable[[], bool] | None = None,
               progress: Callable[[int, int, float], None] | None = None) -> Instruction:
    """Fit an instruction to already-opened exemplar images (all at ``options.resolution``).

    ``resume``: a state saved from a stopped fit of the same exemplars, method, model and options (``--lr`` may
    differ). A fit stopped by ``should_stop`` or by divergence raises FitStopped / FitDiverged whose ``state``
    (with this fit's identity) can be saved and resumed."""
    options = options or FitOptions()
    if options.resolution is None:
        options = replace(options, resolution=editor.resolution)
    if method not in METHODS:
        raise InvertError(f"unknown method '{method}' (choose from {', '.join(METHODS)})")
    if not options.lr > 0 or options.lr == float("inf"):  # NaN fails the first test
        raise InvertError(f"--lr must be a positive number, not {options.lr}")
    if options.loss_target not in ("cfg", "cond"):
        raise InvertError(f"unknown loss target '{options.loss_target}' (cfg or cond)")
    start = time.perf_counter()
    cls = METHODS[method]
    init_text, phrases = _init_text(cls, options, clip, editor, befores, afters)
    fitter = Fitter(editor, befores, afters, options)
    m = cls.initialize(editor, editor.encode_text([init_text]), init_text=init_text, seed=options.seed,
                       **options.method_options)
    if options.reverse and cls.name != "lora":  # a LoRA's reverse is its negation, learned by the same adapter
        reverse_text = _init_text(cls, options, clip, editor, afters, befores)[0]  # the afters' side
        reverse = cls.initialize(editor, editor.encode_text([reverse_text]), init_text=reverse_text,
                                 seed=options.seed, **options.method_options)
        m = TwoWay(m, reverse, reverse_text)
    # Kept in the file too: evaluation's directional similarity and instruction libraries key on it.
    stored = {"exemplar.before": thumbnail_tensor(befores[0]), "exemplar.after": thumbnail_tensor(afters[0])}
    if clip is not None:
        direction = clip_direction(clip, befores, afters)
        stored["clip.direction"] = direction.detach().float().cpu()
        if options.clip_weight and hasattr(cls, "set_clip_direction"):
            m.set_clip_direction(clip, direction, options.clip_weight, options.clip_clamp)

    earlier = resume.seconds if resume is not None else 0.0

    def snapshot(loss: float | None, steps_done: int) -> Instruction:
        return make_instruction(m, editor, options, clip_name=clip.name if clip else "", init_text=init_text,
                                final_loss=loss, seconds=earlier + time.perf_counter() - start,
                                exemplars=exemplars or [], steps_done=steps_done, stored=stored, phrases=phrases)

    def on_step(step: int, loss: float) -> None:
        if progress is not None:  # (steps done, total, this step's loss)
            progress(step, len(fitter.order), loss)
        if checkpoint is not None and save_every and step % save_every == 0 and step < len(fitter.order):
            checkpoint(snapshot(loss, step), step)

    identity = {"method": method, "model": editor.fingerprint, "init_text": init_text, "exemplars": exemplars or [],
                "options": {k: v for k, v in asdict(options).items() if k != "lr"}}
    if resume is not None:
        resume.check_identity(identity)
    try:
        final, _ = fitter.run(m, quiet=quiet, on_step=on_step, resume=resume, should_stop=should_stop)
    except FitStopped as stopped:
        stopped.state.identity, stopped.state.seconds = identity, earlier + time.perf_counter() - start
        raise
    return snapshot(final, options.steps)
