"""Train a toy FLUX.2 [klein] editor on the procedural world and write it as a diffusers Flux2KleinPipeline folder.

    python -m benchmarks.toy_dit_train --out invert/toy/dit --seed 0 --minutes 90

The same world, training pairs and held-out hard edits as the toy InstructPix2Pix (benchmarks/toy_train.py), and
klein's own components at toy sizes: a Qwen3ForCausalLM text encoder, an AutoencoderKLFlux2 and a
Flux2Transformer2DModel that reads the input image as reference tokens. In order, within one wall-clock budget:

1. the text encoder, as a causal language model on the world's texts (instructions of the catalogue, captions,
   the vocabulary's phrases) in klein's chat template, then frozen, as klein's Qwen3 is: the editor reads the
   hidden states of layers 1-3 of 4, stacked, as klein reads layers 9, 18, 27 of 36;
2. the VAE (reconstruction + a small KL); its batch-norm statistics are then set to those of the patchified
   latents of the training images, which is how the pipeline normalizes latents;
3. the transformer with flow matching on (before, instruction, after) triplets: x_s = (1 - s) x0 + s noise,
   target noise - x0, the before image's tokens appended after the noisy ones (ids with time 10), s drawn as the
   sampler's sigmas are (uniform, then the exponential shift with klein's mu for 16 tokens and 20 steps). The
   text is the empty prompt for 10% of the samples, so that CFG against the empty prompt works.

Why a VAE of factor 4 and 16 latent channels: a 32 px image becomes 8x8 latents and 4x4 = 16 tokens of 64
channels; at factor 2 it would be 64 tokens, and a transformer step (batch 32, 1 thread) costs 2.6x more. The
factor-4 VAE learns more slowly per step but a step costs half as much (1.5 vs 3.1 s on the busy machine): at
equal time early on it was 1-2 dB behind (21.7 dB after 500 steps against 23.8 after 300; held-out PSNR), while
the transformer, which gets three quarters of the budget, runs 2.6x the steps. Sixteen channels keep the
compression of the toy IP2P's VAE (3072 numbers -> 1024); 32 learned no faster (20.6 vs 20.5 dB at 300 steps).

The toy reads a prompt padded to 32 tokens and layers (1, 2, 3); the pipeline's defaults are the real model's (512
and (9, 18, 27)), so the folder's ``invert.json`` records them under ``"pipeline"`` (benchmarks/klein_loop.py).

Each phase ends at a fixed fraction of the time left once the data is rendered, 3% of the budget kept for the
final oracle check (``--steps-*`` pins exact step counts instead); learning rates
follow warm-up + cosine over each phase's progress (benchmarks/toy_train.py's Log, Phase and run_phase).
``--reuse FOLDER`` takes the text encoder, tokenizer and VAE of an earlier run and trains the transformer only.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from invert.backbones.model_info import TOY_MODEL, toy_model_path
from invert.backbones.trained_tokenizers import qwen_tokenizer
from invert.toy import world
from invert.vocab import vocab_path

from .klein_loop import TextSettings, time_shift
from .toy_train import (EDIT_NAMES, SIZE, Budget, Data, Log, Phase, build_data, folder_mb, latent_modes, n_params,
                        run_phase, start_run, train_vae, training_arguments, vae_held_out, vae_psnr, world_summary)

TEXT = TextSettings(max_sequence_length=32, text_encoder_out_layers=(1, 2, 3))
TEXT_WIDTH = 64
TEXT_CONFIG = dict(hidden_size=TEXT_WIDTH, intermediate_size=3 * TEXT_WIDTH, num_hidden_layers=4,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=128,
                   tie_word_embeddings=True)
VAE_CONFIG = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
                  up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(16, 32, 64), layers_per_block=1,
                  latent_channels=16, norm_num_groups=8, sample_size=SIZE)
TRANSFORMER_CONFIG = dict(patch_size=1, in_channels=4 * VAE_CONFIG["latent_channels"], num_layers=2,
                          num_single_layers=4, attention_head_dim=32, num_attention_heads=4,
                          joint_attention_dim=len(TEXT.text_encoder_out_layers) * TEXT_WIDTH,
                          timestep_guidance_channels=64, mlp_ratio=3.0, axes_dims_rope=(8, 8, 8, 8), rope_theta=2000,
                          guidance_embeds=False)
TOKENIZER_VOCAB = 600
SAMPLER_STEPS = 20  # the oracle's; training draws s as the sampler's shifted sigmas at this step count
PHASE_ENDS = {"text": 0.03, "vae": 0.25}  # fractions of the budget; the transformer gets the rest
CHECK_RESERVE = 0.03  # of the budget, kept for the final oracle check (--eval-n) so that it ends in time
DROP_TEXT = 0.1


# ----------------------------------------------------------------------------------------------- text

def world_texts(data: Data) -> dict[str, list[str]]:
    """What the text encoder learns from: the catalogue's instructions (never the held-out hard ones), the
    training images' captions and phrases, and the toy vocabulary (the phrases fit ranks)."""
    captions = sorted({texts[0] for texts in data.texts})
    phrases = sorted({p for texts in data.texts for p in texts[1:]})
    vocab = [line.strip() for line in vocab_path("toy").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    return {"instructions": [world.EDITS[n].instruction for n in EDIT_NAMES], "captions": captions,
            "phrases": sorted(set(phrases) | set(vocab))}


def train_tokenizer(texts: list[str], vocab_size: int = TOKENIZER_VOCAB):
    """A byte-level BPE trained on ``texts``, as a Qwen2TokenizerFast (klein's tokenizer class) with Qwen3's
    special tokens and chat template: any text encodes (bytes), the world's words as whole tokens, with and without
    the leading space (a word starts a prompt, or follows another as in the hard edits' "... and make it night")."""
    template = ["user\n", "assistant\n", "\n\n"]  # the chat template's words, single tokens as in Qwen3's
    return qwen_tokenizer(vocab_size, texts + [" " + t for t in texts] + template)


def chat_tokens(tokenizer, texts: list[str]):
    """``texts`` as klein's pipeline tokenizes a prompt: one user turn, the chat template, padded to the length."""
    chats = [tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False,
                                           add_generation_prompt=True, enable_thinking=False) for t in texts]
    return tokenizer(chats, return_tensors="pt", padding="max_length", truncation=True,
                     max_length=TEXT.max_sequence_length)


def templated_length(tokenizer, texts: list[str]) -> int:
    """The longest of ``texts`` in tokens once in the chat template, unpadded; longer than the prompt length is an
    error (the pipeline would cut the instruction silently)."""
    chats = [tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False,
                                           add_generation_prompt=True, enable_thinking=False) for t in texts]
    lengths = [len(ids) for ids in tokenizer(chats).input_ids]
    if max(lengths) > TEXT.max_sequence_length:
        raise ValueError(f"'{texts[int(np.argmax(lengths))]}' is {max(lengths)} tokens in the chat template, more "
                         f"than the prompt length {TEXT.max_sequence_length}")
    return max(lengths)


def text_encoder_model(tokenizer):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **TEXT_CONFIG)
    return Qwen3ForCausalLM(config)


def train_text_encoder(texts: dict[str, list[str]], tokenizer, phase: Phase, seed: int, log: Log, batch: int = 64):
    """Next-token prediction on chat-templated world texts: a third instructions, a third captions, a third
    phrases (padding excluded from the loss)."""
    torch.manual_seed(seed)
    model = text_encoder_model(tokenizer)
    rng = np.random.default_rng(seed + 3)
    pools = list(texts.values())

    def step(_: int) -> torch.Tensor:
        chosen = [str(rng.choice(pools[i % len(pools)])) for i in range(batch)]
        tokens = chat_tokens(tokenizer, chosen)
        labels = tokens.input_ids.masked_fill(tokens.attention_mask == 0, -100)
        return model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask, labels=labels).loss

    model.train()
    steps, loss = run_phase("text", phase, model, 2e-3, step, log)
    return model.eval(), steps, loss


# ------------------------------------------------------------------------------------------------ VAE

def vae_model():
    from diffusers import AutoencoderKLFlux2

    return AutoencoderKLFlux2(**VAE_CONFIG)


@torch.no_grad()
def set_batch_norm(vae, latents: torch.Tensor) -> None:
    """The pipeline normalizes patchified latents with ``vae.bn``'s running statistics (a BatchNorm the VAE never
    runs): set them to the training latents' per-channel mean and variance, so the tokens have unit scale."""
    from diffusers import Flux2KleinPipeline

    patches = Flux2KleinPipeline._patchify_latents(latents)
    vae.bn.running_mean.copy_(patches.mean((0, 2, 3)))
    vae.bn.running_var.copy_(patches.var((0, 2, 3)))


@torch.no_grad()
def tokens_of(vae, latents: torch.Tensor) -> torch.Tensor:
    """VAE latent modes -> normalized, packed tokens, as the pipeline makes the reference image's."""
    from diffusers import Flux2KleinPipeline as Pipe

    patches = Pipe._patchify_latents(latents)
    mean = vae.bn.running_mean.view(1, -1, 1, 1)
    std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps)
    return Pipe._pack_latents((patches - mean) / std)


# ------------------------------------------------------------------------------------- the transformer

def transformer_model():
    from diffusers import Flux2Transformer2DModel

    return Flux2Transformer2DModel(**TRANSFORMER_CONFIG)


def training_mu() -> float:
    from diffusers.pipelines.flux2.pipeline_flux2_klein import compute_empirical_mu

    tokens = (SIZE // (2 ** (len(VAE_CONFIG["block_out_channels"]) - 1)) // 2) ** 2
    return compute_empirical_mu(tokens, SAMPLER_STEPS)


def position_ids(n_side: int, text_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Image ids (target tokens at time 0, then the reference's at time 10) and text ids, as the pipeline's."""
    from diffusers import Flux2KleinPipeline as Pipe

    grid = torch.empty(1, 1, n_side, n_side)
    image = torch.cat([Pipe._prepare_latent_ids(grid)[0], Pipe._prepare_image_ids([grid])[0]])
    return image, Pipe._prepare_text_ids(torch.empty(1, text_length, 1))[0]


def train_transformer(after: torch.Tensor, before: torch.Tensor, edit_index: torch.Tensor, texts: torch.Tensor,
                      empty: torch.Tensor, phase: Phase, seed: int, log: Log, batch: int = 32):
    """Flow matching on packed tokens: ``after``/``before`` (N, tokens, channels), ``texts`` (edits, L, width)."""
    torch.manual_seed(seed)
    transformer = transformer_model()
    n = after.shape[1]
    image_ids, text_ids = position_ids(int(n ** 0.5), texts.shape[1])
    mu = training_mu()
    gen = torch.Generator().manual_seed(seed + 2)

    def step(_: int) -> torch.Tensor:
        idx = torch.randint(len(after), (batch,), generator=gen)
        x0, reference, text = after[idx], before[idx], texts[edit_index[idx]]
        drop = (torch.rand(batch, generator=gen) < DROP_TEXT).view(-1, 1, 1)
        text = torch.where(drop, empty.expand_as(text), text)
        noise = torch.randn(x0.shape, generator=gen)
        s = time_shift(torch.rand(batch, generator=gen), mu)
        noisy = (1 - s.view(-1, 1, 1)) * x0 + s.view(-1, 1, 1) * noise
        v = transformer(hidden_states=torch.cat([noisy, reference], 1), timestep=s, guidance=None,
                        encoder_hidden_states=text, txt_ids=text_ids, img_ids=image_ids, return_dict=False)[0]
        return F.mse_loss(v[:, :n], noise - x0)

    transformer.train()
    steps, loss = run_phase("transformer", phase, transformer, 1e-3, step, log)
    return transformer.eval(), steps, loss


@torch.no_grad()
def encode_instructions(text_encoder, tokenizer, prompts: list[str]) -> torch.Tensor:
    """(len, L, layers x width): klein's prompt embeddings, from the pipeline's own encoder function."""
    from diffusers import Flux2KleinPipeline

    return Flux2KleinPipeline._get_qwen3_prompt_embeds(
        text_encoder, tokenizer, prompts, max_sequence_length=TEXT.max_sequence_length,
        hidden_states_layers=TEXT.text_encoder_out_layers)


# ----------------------------------------------------------------------------------------------- save

def reused_components(folder: Path):
    """An earlier run's frozen parts: (text encoder, tokenizer, VAE)."""
    from diffusers import AutoencoderKLFlux2
    from transformers import Qwen2TokenizerFast, Qwen3ForCausalLM

    return (Qwen3ForCausalLM.from_pretrained(folder / "text_encoder").eval(),
            Qwen2TokenizerFast.from_pretrained(folder / "tokenizer"),
            AutoencoderKLFlux2.from_pretrained(folder / "vae").eval())


def save_model(out: Path, text_encoder, tokenizer, vae, transformer) -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline

    pipe = Flux2KleinPipeline(scheduler=FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True), vae=vae,
                              text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer,
                              is_distilled=False)
    pipe.save_pretrained(out)
    settings = {"pipeline": {"max_sequence_length": TEXT.max_sequence_length,
                             "text_encoder_out_layers": list(TEXT.text_encoder_out_layers)},
                "clip": os.path.relpath(toy_model_path(TOY_MODEL) / "clip", out), "vocab": "toy",
                "why": "The toy klein was trained on prompts padded to 32 tokens and reads its 4-layer text "
                       "encoder's layers 1-3; Flux2KleinPipeline's defaults (512, (9, 18, 27)) are the real "
                       "model's. Pass these to the pipeline's call. Its CLIP is the toy IP2P's, trained on the "
                       "same world, and its phrases the toy world's (vocab 'toy')."}
    (out / "invert.json").write_text(json.dumps(settings, indent=2) + "\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = training_arguments("python -m benchmarks.toy_dit_train", __doc__.split("\n\n")[0], 90.0,
                           ("text", "vae", "transformer"))
    p.add_argument("--reuse", type=Path, help="take the text encoder, tokenizer and VAE from an earlier run's folder "
                   "and give the whole budget to the transformer")
    p.add_argument("--eval-guidance", type=float, action="append", help="guidance scales of the final check "
                   "(repeatable; default 1, 2, 4)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    log, t0, budget, command = start_run(args, "benchmarks.toy_dit_train", argv)
    data = build_data(args.seed, args.pairs_per_edit)
    held_out = vae_held_out()
    texts = world_texts(data)
    if args.reuse:
        text_encoder, tokenizer, vae = reused_components(args.reuse)
        text_record = {"from": str(args.reuse)}
        vae_record = {"from": str(args.reuse), "recon_psnr_db": vae_psnr(vae, held_out)}
        log(f"text encoder, tokenizer and VAE from {args.reuse} (VAE reconstruction {vae_record['recon_psnr_db']:.2f} "
            "dB); the transformer gets the whole budget")
    else:
        tokenizer = train_tokenizer([t for pool in texts.values() for t in pool])
    longest = templated_length(tokenizer, [world.get_edit(n).instruction for n in EDIT_NAMES + list(world.HARD_EDITS)])
    log(f"rendered {len(data.edit)} training pairs of {len(EDIT_NAMES)} edits; tokenizer of {len(tokenizer)} "
        f"tokens; {sum(map(len, texts.values()))} texts; the longest instruction (hard ones too) is {longest} "
        f"tokens in the chat template, of {TEXT.max_sequence_length}")
    clock = Budget.left(t0, budget * (1 - CHECK_RESERVE if args.eval_n else 1))
    if not args.reuse:
        text_encoder, steps, loss = train_text_encoder(
            texts, tokenizer, clock.phase(PHASE_ENDS["text"], args.steps_text), args.seed, log)
        text_record = {"steps": steps, "batch": 64, "final_loss": loss}
        vae, steps, loss, quality = train_vae(
            np.concatenate([data.before, data.after]), held_out,
            clock.phase(PHASE_ENDS["vae"], args.steps_vae), args.seed, log, model=vae_model)
        vae_record = {"steps": steps, "batch": 32, "final_loss": loss, "recon_psnr_db": quality}

    before_latents, after_latents = latent_modes(vae, data.before), latent_modes(vae, data.after)
    set_batch_norm(vae, torch.cat([before_latents, after_latents]))
    before, after = tokens_of(vae, before_latents), tokens_of(vae, after_latents)
    log(f"tokens {tuple(after.shape[1:])}; after-token std {after.std():.3f} once normalized")
    conditioning = encode_instructions(text_encoder, tokenizer, [world.EDITS[n].instruction for n in EDIT_NAMES] + [""])
    transformer, steps, loss = train_transformer(
        after, before, torch.from_numpy(data.edit), conditioning[:-1], conditioning[-1:],
        clock.phase(1.0, args.steps_transformer), args.seed, log)

    save_model(args.out, text_encoder, tokenizer, vae, transformer)
    minutes = (time.time() - t0) / 60
    info = {
        "image_size": SIZE, "tokens": after.shape[1], "seed": args.seed, **world_summary(),
        "training": {
            "command": command, "minutes": round(minutes, 2), "budget_minutes": args.minutes,
            "pairs_per_edit": args.pairs_per_edit, "threads": args.threads,
            "text_encoder": {**text_record, "params": n_params(text_encoder), "tokenizer_size": len(tokenizer)},
            "vae": {**vae_record, "params": n_params(vae)},
            "transformer": {"steps": steps, "batch": 32, "final_loss": loss, "params": n_params(transformer)},
            "flow_matching": {"sigmas": f"uniform, shifted with mu {training_mu():.4f} (klein's for "
                                        f"{after.shape[1]} tokens, {SAMPLER_STEPS} steps)",
                              "target": "noise - x0", "text_dropout": DROP_TEXT},
        },
        "weights_mb": round(folder_mb(args.out), 2),
    }
    (args.out / "toy_world.json").write_text(json.dumps(info, indent=2) + "\n")
    log(f"wrote {args.out} ({info['weights_mb']} MB of weights) after {minutes:.1f} min")

    if args.eval_n:
        from .oracle import evaluate_oracle, format_table

        guidances = tuple((g,) for g in (args.eval_guidance or (1.0, 2.0, 4.0)))
        result = evaluate_oracle(args.out, n=args.eval_n, guidances=guidances)
        log("oracle check:\n" + format_table(result))
        info["oracle_check"] = result
        (args.out / "toy_world.json").write_text(json.dumps(info, indent=2) + "\n")


if __name__ == "__main__":
    main()
