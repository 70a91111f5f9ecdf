"""Tiny FLUX pipelines, as diffusers' own tests build them (tiny transformer, VAE and text encoders from config;
tokenizers trained in-process, as the hub's are unreachable), and the checks each FLUX backbone's test file runs
on its own: the pipeline's output equalled, every method fitted, saved, loaded, mixed and applied, the text K/V
routes, the LoRA export in plain diffusers, the full-size configs on the meta device."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from conftest import make_trainer, scene, tiny_fit

import invert
from invert.api import load_method
from invert.backbones.base import KV_ARGUMENT, Conditioning
from invert.backbones.flux_attention import Capture
from invert.backbones.rows import Rows
from invert.instruction import Instruction
from invert.methods import method_class
from invert.methods.brush import Brush, BrushCall

KLEIN_TEXT = {"max_sequence_length": 32, "text_encoder_out_layers": [1, 2, 3]}
KONTEXT_TEXT = {"max_sequence_length": 24}


def tiny_klein(distilled: bool = False):
    from diffusers import (AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline,
                           Flux2Transformer2DModel)
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from invert.backbones.trained_tokenizers import qwen_tokenizer

    torch.manual_seed(0)
    transformer = Flux2Transformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=48, timestep_guidance_channels=32, axes_dims_rope=[4, 4, 4, 4])
    torch.manual_seed(0)
    text_encoder = Qwen3ForCausalLM(Qwen3Config(
        vocab_size=512, hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=512))
    torch.manual_seed(0)
    vae = AutoencoderKLFlux2(
        sample_size=32, in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1, latent_channels=4,
        norm_num_groups=4, use_quant_conv=False, use_post_quant_conv=False)
    return Flux2KleinPipeline(scheduler=FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True), vae=vae,
                              text_encoder=text_encoder, tokenizer=qwen_tokenizer(), transformer=transformer,
                              is_distilled=distilled)


def tiny_kontext():
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxKontextPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from invert.backbones.tokenizer import clip_tokenizer
    from invert.backbones.trained_tokenizers import t5_tokenizer

    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=[4, 4, 8])
    torch.manual_seed(0)
    clip = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, projection_dim=32, hidden_act="quick_gelu", bos_token_id=49406,
        eos_token_id=49407, pad_token_id=49407))
    torch.manual_seed(0)
    t5 = T5EncoderModel(T5Config(
        vocab_size=128, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
        feed_forward_proj="gated-gelu", is_encoder_decoder=False, pad_token_id=0, eos_token_id=1))
    torch.manual_seed(0)
    vae = AutoencoderKL(
        sample_size=32, in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1, latent_channels=4,
        norm_num_groups=4, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.1159, scaling_factor=0.3611)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    return FluxKontextPipeline(scheduler=scheduler, vae=vae, text_encoder=clip, tokenizer=clip_tokenizer(),
                               text_encoder_2=t5, tokenizer_2=t5_tokenizer(), transformer=transformer)


def save(pipe, folder: Path, pipeline: dict) -> Path:
    """The pipeline as a user's local folder, with the call arguments the toy sizes need (invert.json)."""
    pipe.save_pretrained(folder)
    (folder / "invert.json").write_text(json.dumps({"pipeline": pipeline}))
    return folder


def pixels(img) -> np.ndarray:
    return np.asarray(img, dtype=np.int16)


def night(n: int = 2, size: int = 32):
    return [scene(i, size) for i in range(n)], [scene(i, size, night=True) for i in range(n)]


def fit(editor, method: str, **options):
    """A fit of the night pairs (VISII without its CLIP term: no CLIP reads these text encoders' tokens)."""
    defaults = {"init_text": "make it night", "val": 0, **({"visii_clip_weight": 0.0} if method == "visii" else {})}
    return tiny_fit(editor, *night(), method, **{**defaults, **options})


# -- checks ------------------------------------------------------------------------------------------------------
def check_untrained_apply_is_the_pipeline(editor, pipe, guidances: tuple[float, ...], **call):
    """Zero fit steps, then apply with fresh noise: the pipeline's own call with the same seed, pixel for pixel,
    at each guidance; another seed differs."""
    inst = tiny_fit(editor, *night(1, 64), "visii", steps=0, init_text="make it night", resolution=64,
                    visii_clip_weight=0.0)
    image = scene(5, 64)
    pipe.set_progress_bar_config(disable=True)
    for guidance in guidances:
        ours = invert.apply(inst, [image], editor=editor, fresh_noise=True, seed=11, steps=3, guidance=guidance)[0]
        theirs = pipe(image=image, prompt="make it night", num_inference_steps=3, guidance_scale=guidance,
                      generator=torch.Generator().manual_seed(11), **call).images[0]
        assert np.array_equal(pixels(ours), pixels(theirs)), guidance
    other = invert.apply(inst, [image], editor=editor, fresh_noise=True, seed=12, steps=3)[0]
    assert not np.array_equal(pixels(ours), pixels(other))


def mean_loss(trainer) -> float:
    from invert.fitting.loop import predict

    with torch.no_grad(), trainer.method.installed():
        total = 0.0
        for step in range(len(trainer.schedule)):
            x = trainer.data.inputs(trainer.schedule[step], trainer.pair(step))
            pred = predict(trainer.method, trainer.data, trainer.settings, x.noisy, x.cond, x.timesteps)
            total += torch.nn.functional.mse_loss(pred, x.objective).item()
        return total / len(trainer.schedule)


# A tiny random DiT reads its random text encoder's tokens weakly: learning rates at which 12 steps move the loss
# measurably (visii: 0.25%, brush 2%, lora 15% on the tiny klein).
LEARNING_RATES = {"visii": 1.0, "brush": 0.3, "lora": 0.3}


def check_fitting_lowers_the_loss_and_moves_only_the_learned_state(editor, method: str):
    from invert.methods import settings_for

    settings = {"visii": {}, "brush": {"parts": 2}, "lora": {}}[method]
    learned = method_class(method).initialize(editor, editor.encode_text(["make it night"]), "make it night",
                                              settings_for(method, settings)[1])
    trainer = make_trainer(editor, *night(), learned, steps=12, lr=LEARNING_RATES[method])
    frozen = {k: v.clone() for k, v in editor.denoiser.state_dict().items()}
    start = {k: v.clone() for k, v in learned.state_dict().items()}
    before = mean_loss(trainer)
    trainer.run(quiet=True)
    after = mean_loss(trainer)
    assert after < before * 0.999, (method, before, after)
    moved = [k for k, v in learned.state_dict().items() if not torch.equal(v, start[k])]
    assert moved and all(not k.startswith("init") for k in moved), moved
    assert all(torch.equal(v, frozen[k]) for k, v in editor.denoiser.state_dict().items()), "the model stays frozen"
    return moved


def check_saved_loaded_mixed_and_applied(editor, method: str, tmp_path: Path):
    """A fitted instruction saves and loads as the same instruction (the same image), mixes with another, and
    applies at strength 0 as its initialization."""
    first = fit(editor, method, steps=3, lr=5e-2)
    second = fit(editor, method, steps=3, lr=5e-2, seed=1)
    first.save(tmp_path / f"{method}.inst")
    image = scene(7)
    direct = invert.apply(first, [image], editor=editor, steps=2)[0]
    loaded = invert.apply(str(tmp_path / f"{method}.inst"), [image], editor=editor, steps=2)[0]
    assert np.array_equal(pixels(direct), pixels(loaded))
    mixed = invert.apply([first, second], [image], editor=editor, weights=[1.0, 0.0], steps=2)[0]
    assert np.abs(pixels(mixed) - pixels(direct)).max() <= 1, "weights 1, 0 are the first instruction"
    halfway = invert.apply([first, second], [image], editor=editor, steps=2)[0]
    assert halfway.size == image.size
    zero = invert.apply(first, [image], editor=editor, steps=2, strength=0.0)[0]
    initial = fit(editor, method, steps=0)
    assert np.abs(pixels(zero) - pixels(invert.apply(initial, [image], editor=editor, steps=2)[0])).max() <= 1


def check_installed_and_exported_embeds_edit_as_apply(editor, pipe, tmp_path: Path, **call):
    """A fitted visii instruction (tokens, and Kontext's pooled vector, learned) through the Python API's hand-off
    to the user's own pipeline: invert.installed's keyword arguments and export-embeds' file, each called as
    ``pipe(**arguments, image=...)``, edit as invert's apply does; the pipeline's own prompt does not."""
    from safetensors.torch import load_file

    from invert.methods.visii import Visii

    inst = fit(editor, "visii", steps=3, lr=LEARNING_RATES["visii"])
    learned = load_method(inst, editor)
    image = scene(9, 64)
    ours = invert.apply(inst, [image], editor=editor, steps=3, fresh_noise=True, seed=4)[0]
    run = dict(image=image, num_inference_steps=3, guidance_scale=inst.meta.text_guidance, **call)
    with invert.installed(inst, pipe) as arguments:
        theirs = pipe(**arguments, **run, generator=torch.Generator().manual_seed(4)).images[0]
    assert set(arguments) == ({"prompt_embeds"} | ({"pooled_prompt_embeds"} if editor.learns_pooled else set()))
    if editor.learns_pooled:
        init = editor.encode_text(["make it night"]).pooled
        assert torch.equal(arguments["pooled_prompt_embeds"], learned.pooled_vector().to(editor.dtype))
        assert not torch.equal(arguments["pooled_prompt_embeds"], init), "the learned pooled vector, not the init's"
    assert np.array_equal(pixels(ours), pixels(theirs))
    Visii.export("embeds", inst.tensors, inst.meta, tmp_path / "embeds.safetensors")
    exported = load_file(tmp_path / "embeds.safetensors")
    assert exported.keys() == arguments.keys()
    from_file = pipe(**exported, **run, generator=torch.Generator().manual_seed(4)).images[0]
    assert np.array_equal(pixels(ours), pixels(from_file))
    plain = pipe(prompt="make it night", **run, generator=torch.Generator().manual_seed(4)).images[0]
    assert not np.array_equal(pixels(plain), pixels(ours)), "the learned instruction matters"


def check_routes_compute_what_the_layers_do(editor):
    """With the routes installed, a call is the layers' own computation; a brush instruction holding the K/V the
    layers compute in this very call changes nothing, other K/V change the result, on the conditional rows only."""
    enc = editor.encode_text(["make it night"])
    m = enc.eos[0] - enc.start
    cond = editor.condition([scene(1)])
    x = torch.randn(cond.shape, generator=torch.Generator().manual_seed(0))
    groups = [editor.guidance_groups()[0]] * 2
    rows = Rows(torch.tensor([True, False]), torch.tensor([700.0, 700.0]))
    embeds = enc.embeds.expand(2, -1, -1)
    pooled = None if enc.pooled is None else enc.pooled.expand(2, -1)
    x2, cond2 = x.expand(2, *x.shape[1:]), cond.expand(2, *cond.shape[1:])

    def predict(attention=None):
        return editor.predict(x, cond, Conditioning(embeds, attention, pooled), rows, groups)

    with torch.no_grad():
        plain = editor.predict(x2, cond2, Conditioning(embeds, None, pooled), Rows.uniform(rows.timesteps, True),
                               [groups[0]])
        capture = Capture(enc.start, m)
        with editor.instruction_kv_routes():
            assert torch.equal(predict({KV_ARGUMENT: capture}), plain)
            assert set(capture.kv) == set(editor.instruction_kv_layers())
            kv = {name: (k[:1], v[:1]) for name, (k, v) in capture.kv.items()}
            same = Brush(editor, enc.embeds, kv, pooled=enc.pooled)
            assert torch.equal(predict({KV_ARGUMENT: same.call(rows)}), plain)
            moved = Brush(editor, enc.embeds, {n: (k + 1, v - 1) for n, (k, v) in kv.items()}, pooled=enc.pooled)
            out = predict({KV_ARGUMENT: BrushCall(moved, rows.conditional, torch.zeros(2, dtype=torch.long))})
    assert not torch.allclose(out[:1], plain[:1]), "the learned K/V change the conditional row"
    assert torch.equal(out[1:], plain[1:]), "and only it"


def check_text_kv_follow_the_timestep(editor):
    """A DiT's text stream is modulated by the timestep: each time part starts from its own projection."""
    from invert.methods.brush import project_kv

    kv = project_kv(editor, editor.encode_text(["make it night"]).embeds, 3, 2)
    assert any(not torch.allclose(k[0], k[1]) for k, _ in kv.values())


def check_low_memory_computes_the_same_gradients(editor):
    """Gradient checkpointing recomputes the transformer's forward in the backward pass: the brush route, named
    in the call's arguments, is read again, and the gradients are those of the plain fit."""
    from invert.methods.settings import BrushSettings

    def gradients():
        learned = Brush.initialize(editor, editor.encode_text(["make it night"]), "make it night",
                                   BrushSettings(brush_parts=2))
        trainer = make_trainer(editor, *night(), learned, steps=1)
        with learned.installed():
            trainer.step_loss(0, lambda loss: loss)
        return [p.grad.clone() for p in learned.parameters()]

    plain = gradients()
    editor.set_low_memory(True)
    try:
        checkpointed = gradients()
    finally:
        editor.set_low_memory(False)
    for a, b in zip(plain, checkpointed):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


DOUBLE_STREAM_ATTENTION = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")


def check_lora_adapts_the_attention(editor, expected: set[str]):
    """A LoRA fit with the default targets adapts exactly ``expected`` (the attention projections of both streams)
    and trains each of them (peft's B starts at zero), and the file records the targets it was fitted with."""
    inst = fit(editor, "lora", steps=3, lr=LEARNING_RATES["lora"])
    prefix = editor.lora_prefix
    trained = {k[len(prefix):].rpartition(".lora_")[0]: v for k, v in inst.tensors.items()
               if k.startswith(prefix) and ".lora_B." in k}
    assert set(trained) == expected
    assert all(v.abs().sum() > 0 for v in trained.values()), [k for k, v in trained.items() if not v.abs().sum()]
    assert inst.meta.extra["targets"] == list(editor.lora_targets)


def check_lora_export_loads_in_diffusers(editor, pipe, tmp_path: Path, guidance: float, **call):
    """The exported adapter, loaded with the pipeline's own load_lora_weights, edits as invert's apply does."""
    from invert.methods.lora import Lora

    inst = tiny_fit(editor, *night(1, 64), "lora", steps=0, resolution=64, init_text="", guidance=guidance)
    gen = torch.Generator().manual_seed(1)
    tensors = {k: (torch.randn(v.shape, generator=gen) * 3.0 if ".lora_B." in k else v) for k, v in
               inst.tensors.items()}
    inst = Instruction("lora", tensors, inst.meta)
    image = scene(7, 64)
    ours = invert.apply(inst, [image], editor=editor, steps=3)[0]
    Lora.export("lora", inst.tensors, inst.meta, tmp_path / "adapter.safetensors")
    pipe.set_progress_bar_config(disable=True)
    args = dict(image=image, prompt="", num_inference_steps=3, guidance_scale=guidance, **call)
    plain = pipe(**args, generator=torch.Generator().manual_seed(inst.meta.noise_seed)).images[0]
    pipe.load_lora_weights(str(tmp_path / "adapter.safetensors"))
    try:
        theirs = pipe(**args, generator=torch.Generator().manual_seed(inst.meta.noise_seed)).images[0]
    finally:
        pipe.unload_lora_weights()
    assert np.abs(pixels(ours) - pixels(theirs)).max() <= 1, "the exported adapter edits as invert's apply"
    assert np.abs(pixels(plain) - pixels(theirs)).max() > 8, "and the adapter matters"


def check_reverse_and_hybrid(editor):
    """A two-way fit with the cycle term (the clean estimate, the estimate as the reverse's input image) and a
    hybrid instruction (the text's encoding after the learned tokens) run on the backbone."""
    inst = fit(editor, "visii", steps=2, reverse=True, cycle_weight=1.0)
    image = scene(3)
    forward = invert.apply(inst, [image], editor=editor, steps=2)[0]
    back = invert.apply(inst, [image], editor=editor, steps=2, reverse=True)[0]
    hybrid = invert.apply(inst, [image], editor=editor, steps=2, text="with snow")[0]
    assert not np.array_equal(pixels(forward), pixels(back))
    assert not np.array_equal(pixels(forward), pixels(hybrid))
    assert np.isfinite(float(inst.meta.final_loss))


def check_full_size_configs(cls, folder: Path, counts: dict[str, int]):
    """The shipped full-size configs instantiated on the meta device: the real parameter counts."""
    with torch.device("meta"):
        pipe = cls.from_configs(folder)
    assert {name: sum(p.numel() for p in getattr(pipe, name).parameters()) for name in counts} == counts
    return pipe
