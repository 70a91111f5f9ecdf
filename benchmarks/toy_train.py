"""Train the toy InstructPix2Pix on the procedural world and write it as a diffusers model folder.

    python -m benchmarks.toy_train --out invert/toy/model --seed 0 --minutes 52

In order, within one wall-clock budget: a tiny CLIP (contrastive, on rendered scenes and their captions), a
small AutoencoderKL (reconstruction + a small KL), then an 8-channel UNet with the InstructPix2Pix recipe on
(before, instruction, after) triplets of the edit catalogue, conditioned on the frozen CLIP text tower.

Why 32 px: on a 2-core CPU the budget is compute. The UNet's cost is set by its latent size (16x16 either way),
but a VAE at 64 px (factor 4) costs 4x more per image and must compress 3x harder than one at 32 px (factor 2),
so at 32 px the VAE reconstructs far better in the same minutes, and the scenes' shapes are still legible.

Each phase ends at a fixed fraction of the budget (``--steps-*`` pins exact step counts instead, for runs that
must repeat bit for bit on the same machine). Learning rates follow warm-up + cosine over each phase's progress.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from invert.evaluation import psnr
from invert.toy import world
from invert.vocab import vocab_path

SIZE = 32
TEXT_WIDTH = 32  # the 49,408 x width token embedding is most of the weights, and it is stored twice
SCHEDULE = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)
PHASE_ENDS = {"clip": 0.08, "vae": 0.27}  # fractions of the budget; the UNet gets the rest
SAVE_RESERVE_S = 20.0
DROP_P = 0.05  # IP2P: drop the text 5%, the image 5%, both 5%


class Log:
    """Prints and appends to ``train_log.txt``."""

    def __init__(self, path: Path):
        self.file = path.open("a", encoding="utf-8")
        self.t0 = time.time()

    def __call__(self, msg: str) -> None:
        line = f"[{time.time() - self.t0:7.1f}s] {msg}"
        print(line, flush=True)
        self.file.write(line + "\n")
        self.file.flush()


@dataclass
class Phase:
    """When a training phase stops: after ``steps`` if pinned, else at the wall-clock ``end``."""

    start: float
    end: float
    steps: int | None = None

    def progress(self, step: int) -> float:
        if self.steps:
            return step / self.steps
        return (time.time() - self.start) / max(1e-6, self.end - self.start)


@dataclass
class Budget:
    """The training clock: phases end at fractions of the time left once the data is rendered (on a busy machine
    rendering takes a minute, which would otherwise come out of the first phase alone), less the save reserve."""

    start: float
    seconds: float

    @classmethod
    def left(cls, t0: float, total_s: float) -> "Budget":
        now = time.time()
        return cls(now, max(0.0, t0 + total_s - SAVE_RESERVE_S - now))

    def phase(self, end: float, steps: int | None) -> Phase:
        return Phase(time.time(), self.start + end * self.seconds, steps)


def lr_at(progress: float, base: float, warmup: float = 0.05, floor: float = 0.05) -> float:
    if progress < warmup:
        return base * max(progress / warmup, 0.01)
    t = min(1.0, (progress - warmup) / (1 - warmup))
    return base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t)))


def run_phase(name: str, phase: Phase, model: torch.nn.Module, lr: float, step_fn: Callable[[int], torch.Tensor],
              log: Log, every: int = 50) -> tuple[int, float]:
    """AdamW over ``step_fn(step) -> loss`` until the phase ends; returns steps done and the final mean loss."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    step, recent = 0, []
    while phase.progress(step) < 1:
        for group in opt.param_groups:
            group["lr"] = lr_at(phase.progress(step), lr)
        loss = step_fn(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        recent = (recent + [loss.item()])[-every:]
        step += 1
        if step % every == 0:
            log(f"{name} step {step} loss {np.mean(recent):.5f} lr {opt.param_groups[0]['lr']:.2e}")
    final = float(np.mean(recent)) if recent else float("nan")
    log(f"{name} done: {step} steps, final loss {final:.5f}")
    return step, final


# ----------------------------------------------------------------------------------------------- data

@dataclass
class Data:
    before: np.ndarray  # (N, H, W, 3) uint8
    after: np.ndarray
    edit: np.ndarray  # (N,) index into EDIT_NAMES
    texts: list[list[str]]  # per image (befores, then afters): the captions CLIP may pair it with


EDIT_NAMES = list(world.EDITS)


def training_seed(seed: int, edit_index: int) -> int:
    """Seeds of the training pairs; the evaluation's held-out seeds (from 10**6) never collide with them."""
    return seed * 1000 + edit_index


def _phrases(edit: world.Edit, scene: world.Scene, after: bool) -> list[str]:
    """The full caption first, then short phrases (a shape, the background, the style), so that ranking single
    phrases with this CLIP means something."""
    shown = edit.edit_scene(scene) if after else scene
    style = edit.style if after else ""
    full = world.caption(shown) + (f", {style}" if style else "")
    shapes = [f"{s.color} {s.kind}" for s in shown.shapes] + [s.kind for s in shown.shapes]
    background = f"a {shown.background} background"
    return [full, background, *shapes, *([style] if style else [])]


def build_data(seed: int, per_edit: int, size: int = SIZE) -> Data:
    befores, afters, edits, before_texts, after_texts = [], [], [], [], []
    for index, name in enumerate(EDIT_NAMES):
        edit = world.EDITS[name]
        rng = np.random.default_rng(training_seed(seed, index))
        for _ in range(per_edit):
            scene = world.scene_for(edit, rng)
            before, after = world.apply_edit(edit, scene, size)
            befores.append(np.asarray(before))
            afters.append(np.asarray(after))
            edits.append(index)
            before_texts.append(_phrases(edit, scene, after=False))
            after_texts.append(_phrases(edit, scene, after=True))
    return Data(np.stack(befores), np.stack(afters), np.array(edits), before_texts + after_texts)


def to_unit(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1], as diffusers' VAE expects."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1


# ----------------------------------------------------------------------------------------------- CLIP

def clip_config(size: int = SIZE):
    from transformers import CLIPConfig

    text = dict(hidden_size=TEXT_WIDTH, intermediate_size=4 * TEXT_WIDTH, num_attention_heads=4, num_hidden_layers=3,
                vocab_size=49408, max_position_embeddings=77, projection_dim=64, bos_token_id=49406,
                eos_token_id=49407, pad_token_id=49407)
    vision = dict(hidden_size=64, intermediate_size=256, num_attention_heads=4, num_hidden_layers=3, image_size=size,
                  patch_size=8, projection_dim=64)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=64)


def clip_pixels(images: np.ndarray) -> torch.Tensor:
    """The normalization of CLIPImageProcessor (the images are already at the CLIP's size)."""
    from transformers.utils.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    return (x - torch.tensor(OPENAI_CLIP_MEAN)[:, None, None]) / torch.tensor(OPENAI_CLIP_STD)[:, None, None]


def train_clip(data: Data, tokenizer, phase: Phase, seed: int, log: Log, batch: int = 128):
    from transformers import CLIPModel

    torch.manual_seed(seed)
    model = CLIPModel(clip_config())
    images = np.concatenate([data.before, data.after])
    rng = np.random.default_rng(seed)

    def step(_: int) -> torch.Tensor:
        idx = rng.choice(len(images), batch, replace=False)
        # Half full captions, half single phrases; identical texts in a batch are all positives.
        texts = [data.texts[i][0] if rng.random() < 0.5 else str(rng.choice(data.texts[i][1:])) for i in idx]
        tokens = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        out = model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask,
                    pixel_values=clip_pixels(images[idx]))
        same = torch.tensor([[a == b for b in texts] for a in texts], dtype=torch.float32)
        targets = same / same.sum(1, keepdim=True)
        return (F.cross_entropy(out.logits_per_image, targets) + F.cross_entropy(out.logits_per_text, targets)) / 2

    model.train()
    steps, loss = run_phase("clip", phase, model, 1e-3, step, log)
    return model.eval(), steps, loss


# ------------------------------------------------------------------------------------------------ VAE

def vae_model(size: int = SIZE):
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64),
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         layers_per_block=1, norm_num_groups=16, sample_size=size)


@torch.no_grad()
def vae_psnr(vae, images: np.ndarray) -> float:
    """Mean PSNR (dB) of the VAE's reconstructions of ``images``."""
    x = to_unit(images)
    recon = vae.decode(vae.encode(x).latent_dist.mode()).sample
    return float(psnr((recon.clamp(-1, 1) + 1) / 2, (x + 1) / 2).mean())


def train_vae(images: np.ndarray, held_out: np.ndarray, phase: Phase, seed: int, log: Log, batch: int = 32,
              kl_weight: float = 1e-6, model: Callable[[], torch.nn.Module] = vae_model):
    """Reconstruction + a small KL from ``model()``'s random weights (any diffusers VAE with a ``latent_dist``)."""
    torch.manual_seed(seed)
    vae = model()
    rng = np.random.default_rng(seed + 1)

    def step(_: int) -> torch.Tensor:
        x = to_unit(images[rng.choice(len(images), batch, replace=False)])
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        # SD's VAE weighs a summed KL by 1e-6 against a summed reconstruction error: the same ratio per element.
        return F.mse_loss(recon, x) + kl_weight * posterior.kl().sum() / x.numel()

    vae.train()
    steps, loss = run_phase("vae", phase, vae, 2e-3, step, log)
    vae.eval()
    quality = vae_psnr(vae, held_out)
    log(f"vae reconstruction PSNR on held-out images: {quality:.2f} dB")
    return vae, steps, loss, quality


@torch.no_grad()
def center_latents(vae, mean: torch.Tensor) -> None:
    """Shift the VAE's latent space by ``-mean`` (per channel) without changing what it decodes.

    IP2P's pipeline has no latent shift (only ``scaling_factor``), so the shift is folded into the 1x1 convolutions
    around the latent: the encoder's ``quant_conv`` bias gives means lower by ``mean``, and the decoder's
    ``post_quant_conv`` bias adds ``W @ mean`` back. Centred latents keep the little signal left at t=999 at zero
    mean, like the pure noise sampling starts from."""
    vae.quant_conv.bias[: len(mean)] -= mean
    weight = vae.post_quant_conv.weight[:, :, 0, 0]
    vae.post_quant_conv.bias += weight @ mean


@torch.no_grad()
def latent_modes(vae, images: np.ndarray, batch: int = 256) -> torch.Tensor:
    return torch.cat([vae.encode(to_unit(images[i:i + batch])).latent_dist.mode()
                      for i in range(0, len(images), batch)])


# ----------------------------------------------------------------------------------------------- UNet

def unet_model(size: int = SIZE):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=size // 2, in_channels=8, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_WIDTH, attention_head_dim=4, norm_num_groups=16)


@torch.no_grad()
def encode_texts(text_encoder, tokenizer, texts: list[str]) -> torch.Tensor:
    """The (len, 77, width) conditioning exactly as the pipeline computes it (max-length padding, no mask)."""
    ids = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    return text_encoder(ids)[0]


def train_unet(after_latents: torch.Tensor, before_latents: torch.Tensor, edit_index: torch.Tensor,
               texts: torch.Tensor, empty: torch.Tensor, phase: Phase, seed: int, log: Log, batch: int = 32):
    """IP2P on noised scaled after-latents, the before latent's mode concatenated on channels; v-prediction.

    Why v and not epsilon: every edit here is a deterministic function of the before image, so the sampler's
    first, high-noise steps must already predict the exact after image. An epsilon loss weighs the error of that
    prediction by the signal-to-noise ratio (0.005 at t=999), so an epsilon model left the colours of the
    first steps wrong (16-21 dB one-step predictions at t=900 in the first run); v weighs it by SNR + 1."""
    from diffusers import DDPMScheduler

    torch.manual_seed(seed)
    unet = unet_model()
    alphas = DDPMScheduler(**SCHEDULE).alphas_cumprod
    gen = torch.Generator().manual_seed(seed + 2)

    def step(_: int) -> torch.Tensor:
        idx = torch.randint(len(after_latents), (batch,), generator=gen)
        x0, image, cond = after_latents[idx], before_latents[idx], texts[edit_index[idx]]
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, len(alphas), (batch,), generator=gen)
        a = alphas[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
        r = torch.rand(batch, generator=gen)
        drop_text = (r < 2 * DROP_P).view(-1, 1, 1)  # [0, .05): text only, [.05, .1): both
        keep_image = ~((r >= DROP_P) & (r < 3 * DROP_P)).view(-1, 1, 1, 1)  # [.05, .15): image dropped
        cond = torch.where(drop_text, empty.expand_as(cond), cond)
        pred = unet(torch.cat([noisy, image * keep_image], 1), t, cond).sample
        return F.mse_loss(pred, a.sqrt() * noise - (1 - a).sqrt() * x0)

    unet.train()
    steps, loss = run_phase("unet", phase, unet, 1e-3, step, log)
    return unet.eval(), steps, loss


# ----------------------------------------------------------------------------------------------- save

def text_encoder_from(clip):
    """IP2P's text encoder: a CLIPTextModel holding the CLIP's own text-tower weights."""
    from transformers import CLIPTextModel

    text_encoder = CLIPTextModel(clip.config.text_config)
    text_encoder.load_state_dict(clip.text_model.state_dict())
    return text_encoder.eval()


def save_model(out: Path, clip, vae, unet, tokenizer) -> None:
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionInstructPix2PixPipeline
    from transformers import CLIPImageProcessor

    text_encoder = text_encoder_from(clip)
    scheduler = EulerAncestralDiscreteScheduler(**SCHEDULE, steps_offset=1, prediction_type="v_prediction")
    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(out)
    clip.save_pretrained(out / "clip")
    shutil.copyfile(vocab_path("toy"), out / "vocab.txt")  # the phrases fit ranks by default on this model
    size = clip.config.vision_config.image_size
    CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(
        out / "clip")


def folder_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*.safetensors")) / 2**20


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def training_arguments(prog: str, description: str, minutes: float, phases: tuple[str, ...]) -> argparse.ArgumentParser:
    """The toy trainers' options: where, seed, budget, data, threads, pinned steps per phase, the final check."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--out", type=Path, required=True, help="model folder to write (diffusers format)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--minutes", type=float, default=minutes, help="wall-clock budget for all the models")
    p.add_argument("--pairs-per-edit", type=int, default=500, help="training pairs rendered per catalogue edit")
    p.add_argument("--threads", type=int, default=2)
    for name in phases:
        p.add_argument(f"--steps-{name}", type=int, default=None, help=f"exact {name} steps (overrides the budget)")
    p.add_argument("--eval-n", type=int, default=5, help="held-out pairs per edit in the final check (0: skip)")
    return p


def vae_held_out() -> np.ndarray:
    """Held-out images the VAE's reconstruction is measured on: night scenes (dark) and plain ones."""
    return np.stack([np.asarray(a) for _, a in world.make_pairs("night", 8, 10**6)] +
                    [np.asarray(b) for b, _ in world.make_pairs("remove_square", 8, 10**6)])


def world_summary() -> dict:
    """The edits a toy model was trained on and held out from, for its ``toy_world.json``."""
    return {"edits": EDIT_NAMES, "global_edits": [n for n in EDIT_NAMES if world.EDITS[n].kind == "global"],
            "local_edits": [n for n in EDIT_NAMES if world.EDITS[n].kind == "local"],
            "hard_edits": list(world.HARD_EDITS),
            "instructions": {n: world.get_edit(n).instruction for n in EDIT_NAMES + list(world.HARD_EDITS)}}


def start_run(args: argparse.Namespace, module: str, argv: list[str] | None) -> tuple[Log, float, float, str]:
    """Threads, the output folder and its log: (log, start time, budget in s, the command as typed)."""
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    log = Log(args.out / "train_log.txt")
    command = f"python -m {module} " + " ".join(sys.argv[1:] if argv is None else argv)
    log(f"{module}: {command} | seed {args.seed}, budget {args.minutes} min, size {SIZE}")
    return log, log.t0, args.minutes * 60, command


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return training_arguments("python -m benchmarks.toy_train", __doc__.split("\n\n")[0], 52.0,
                              ("clip", "vae", "unet")).parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from invert.backbones.tokenizer import clip_tokenizer

    log, t0, budget, command = start_run(args, "benchmarks.toy_train", argv)
    data = build_data(args.seed, args.pairs_per_edit)
    held_out = vae_held_out()
    log(f"rendered {len(data.edit)} training pairs of {len(EDIT_NAMES)} edits")
    tokenizer = clip_tokenizer()
    clock = Budget.left(t0, budget)

    clip, clip_steps, clip_loss = train_clip(
        data, tokenizer, clock.phase(PHASE_ENDS["clip"], args.steps_clip), args.seed, log)
    vae, vae_steps, vae_loss, vae_quality = train_vae(
        np.concatenate([data.before, data.after]), held_out,
        clock.phase(PHASE_ENDS["vae"], args.steps_vae), args.seed, log)

    mean = torch.cat([latent_modes(vae, data.before), latent_modes(vae, data.after)]).mean((0, 2, 3))
    center_latents(vae, mean)
    log(f"latent channel means {[round(float(m), 3) for m in mean]} folded into the VAE")
    before_latents, after_modes = latent_modes(vae, data.before), latent_modes(vae, data.after)
    scaling = float(1 / after_modes.std())  # so the diffused latents have unit std, as SD's 0.18215 does
    vae.register_to_config(scaling_factor=scaling)
    log(f"latents: mean {after_modes.mean():.3f}, std {after_modes.std():.3f} -> scaling_factor {scaling:.4f}")
    conditioning = encode_texts(text_encoder_from(clip), tokenizer, [world.EDITS[n].instruction for n in EDIT_NAMES] + [""])
    unet, unet_steps, unet_loss = train_unet(
        after_modes * scaling, before_latents, torch.from_numpy(data.edit), conditioning[:-1], conditioning[-1:],
        clock.phase(1.0, args.steps_unet), args.seed, log)

    save_model(args.out, clip, vae, unet, tokenizer)
    minutes = (time.time() - t0) / 60
    info = {
        "image_size": SIZE, "latent_size": SIZE // 2, "seed": args.seed, **world_summary(),
        "training": {
            "command": command, "minutes": round(minutes, 2), "budget_minutes": args.minutes,
            "pairs_per_edit": args.pairs_per_edit, "threads": args.threads,
            "clip": {"steps": clip_steps, "batch": 128, "final_loss": clip_loss, "params": n_params(clip)},
            "vae": {"steps": vae_steps, "batch": 32, "final_loss": vae_loss, "params": n_params(vae),
                    "recon_psnr_db": vae_quality, "scaling_factor": scaling},
            "unet": {"steps": unet_steps, "batch": 32, "final_loss": unet_loss, "params": n_params(unet)},
            "noise_schedule": SCHEDULE, "prediction_type": "v_prediction", "condition_dropout": {"text": DROP_P, "image": DROP_P, "both": DROP_P},
        },
        "weights_mb": round(folder_mb(args.out), 2),
    }
    (args.out / "toy_world.json").write_text(json.dumps(info, indent=2) + "\n")
    log(f"wrote {args.out} ({info['weights_mb']} MB of weights) after {minutes:.1f} min")

    if args.eval_n:
        from .oracle import evaluate_oracle, format_table

        result = evaluate_oracle(args.out, n=args.eval_n)
        log("oracle check:\n" + format_table(result))
        info["oracle_check"] = result
        (args.out / "toy_world.json").write_text(json.dumps(info, indent=2) + "\n")


if __name__ == "__main__":
    main()
