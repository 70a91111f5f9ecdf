"""SDXL InstructPix2Pix (and CosXL Edit) as an invert backbone, on tiny components built as diffusers' own SDXL
tests build them (a 2-block UNet with SDXL's text-time added conditions, two 32-wide CLIP text encoders, the real
CLIP BPE), saved with save_pretrained and loaded through load_editor like a user's folder."""
import json
import re

import numpy as np
import pytest
import torch
from conftest import messages, scene

import invert
from invert.api import load_method
from invert.backbones import load_editor
from invert.backbones.rows import Rows

RES = 32
CLIP = dict(vocab_size=49408, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=77, projection_dim=32, hidden_act="quick_gelu", bos_token_id=49406,
            eos_token_id=49407, pad_token_id=49407)


def tiny_pipeline(cosxl: bool = False):
    from diffusers import (AutoencoderKL, EDMEulerScheduler, EulerDiscreteScheduler,
                           StableDiffusionXLInstructPix2PixPipeline, UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from invert.backbones.tokenizer import clip_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=RES // 2, in_channels=8, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, transformer_layers_per_block=(1, 1),
        norm_num_groups=8, cross_attention_dim=64, addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 32)
    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8, 16), in_channels=3, out_channels=3, norm_num_groups=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        latent_channels=4, sample_size=RES, scaling_factor=0.13025)
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(CLIPTextConfig(**CLIP))
    torch.manual_seed(1)
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**CLIP))
    tokenizer_2 = clip_tokenizer()
    tokenizer_2.pad_token = "!"
    if cosxl:
        scheduler = EDMEulerScheduler(sigma_min=0.002, sigma_max=120.0, sigma_data=1.0,
                                      prediction_type="v_prediction", sigma_schedule="exponential")
    else:
        scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                           steps_offset=1, timestep_spacing="leading")
    pipe = StableDiffusionXLInstructPix2PixPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=clip_tokenizer(),
        tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler, add_watermarker=False, is_cosxl_edit=cosxl)
    if cosxl:
        pipe.register_to_config(is_cosxl_edit=True)  # so that model_index.json records it
    return pipe


@pytest.fixture(scope="session")
def sdxl_dir(tmp_path_factory, _isolated_cache):
    """The tiny SDXL-IP2P folder, with conftest's tiny CLIP (32 wide: the first encoder's width) in clip/, which
    invert takes for the init search and the CLIP direction term."""
    from conftest import get_dummy_components

    folder = tmp_path_factory.mktemp("tiny-sdxl-ip2p")
    tiny_pipeline().save_pretrained(folder)
    get_dummy_components()[1].save_pretrained(folder / "clip")
    return folder


@pytest.fixture(scope="session")
def cosxl_dir(tmp_path_factory, _isolated_cache):
    folder = tmp_path_factory.mktemp("tiny-cosxl-edit")
    tiny_pipeline(cosxl=True).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def sdxl(sdxl_dir):
    return load_editor(str(sdxl_dir), device="cpu", dtype="fp32")


@pytest.fixture(scope="session")
def cosxl(cosxl_dir):
    return load_editor(str(cosxl_dir), device="cpu", dtype="fp32")


def their_pipeline(folder):
    from diffusers import StableDiffusionXLInstructPix2PixPipeline

    pipe = StableDiffusionXLInstructPix2PixPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pixels(img):
    return np.asarray(img, dtype=np.int16)


def fit(editor, method, steps=0, **options):
    from conftest import tiny_fit

    options.setdefault("clip_weight", 0) if method == "visii" else None
    return tiny_fit(editor, [scene(0)], [scene(0, night=True)], method, steps=steps, init_text="make it night",
                    init="auto", **options)


def test_the_folder_picks_the_backbone_and_cosxl_is_read_from_model_index(sdxl, cosxl, cosxl_dir):
    assert sdxl.name == cosxl.name == "sdxl-ip2p"
    assert not sdxl.pipe.is_cosxl_edit and cosxl.pipe.is_cosxl_edit
    assert json.loads((cosxl_dir / "model_index.json").read_text())["is_cosxl_edit"] is True
    assert sdxl.edm is None and cosxl.edm is not None


@pytest.mark.parametrize("which", ["sdxl", "cosxl"])
def test_encoding_is_the_pipelines(which, request):
    editor = request.getfixturevalue(which)
    pipe = editor.pipe
    embeds, negative, pooled, negative_pooled = pipe.encode_prompt("make it night", device="cpu")
    ours = editor.encode_text(["make it night"])
    assert torch.equal(ours.embeds, embeds) and torch.equal(ours.pooled, pooled)
    assert ours.embeds.shape == (1, 77, 64) and ours.start == 1 and ours.eos == [4]
    assert torch.equal(editor.uncond.embeds, negative) and torch.equal(editor.uncond.pooled, negative_pooled)
    assert not editor.uncond.embeds.any(), "force_zeros_for_empty_prompt: zeros, not the empty prompt's encoding"
    from invert.fitting.loop import FitData

    assert FitData(editor, [scene(0)], [scene(0)], 0).uncond is editor.uncond, "a fit's unconditional rows too"


@pytest.mark.parametrize("which", ["sdxl", "cosxl"])
@pytest.mark.parametrize("guidance", [4.0, 1.0])
def test_unfitted_instruction_equals_the_diffusers_pipeline(which, guidance, request):
    """--steps 0 --init-text P, then apply --fresh-noise --seed S == the pipeline's call on P with the same seed
    (guided: three rows with the added conditions; unguided: the text rows alone)."""
    editor, folder = request.getfixturevalue(which), request.getfixturevalue(f"{which}_dir")
    inst = fit(editor, "visii")
    image = scene(5)
    ours = invert.apply(inst, [image], editor=editor, fresh_noise=True, seed=11, steps=3, guidance=guidance)[0]
    theirs = their_pipeline(folder)("make it night", image=image, num_inference_steps=3, guidance_scale=guidance,
                                    image_guidance_scale=1.5, height=RES, width=RES,
                                    generator=torch.Generator().manual_seed(11)).images[0]
    assert np.array_equal(pixels(ours), pixels(theirs))
    other = invert.apply(inst, [image], editor=editor, fresh_noise=True, seed=12, steps=3, guidance=guidance)[0]
    assert not np.array_equal(pixels(ours), pixels(other))


def test_edm_training_is_the_schedulers_preconditioning(cosxl):
    """A CosXL fit noises and estimates exactly as EDMEulerScheduler preconditions: training timestep i is the
    scheduler's 1000-step schedule counted from its end, the UNet reads c_in x at 0.25 log sigma, and the clean
    estimate of the objective is the clean latent."""
    from diffusers import EDMEulerScheduler

    edm, sched = cosxl.edm, EDMEulerScheduler.from_config(cosxl.scheduler.config)
    sched.set_timesteps(1000)
    assert torch.equal(edm.sigmas, sched.sigmas[:-1].flip(0))
    t = torch.tensor([0, 400, 999])
    sigma = edm.sigmas[t].view(-1, 1, 1, 1)
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 4, 4, 4, generator=gen), torch.randn(3, 4, 4, 4, generator=gen)
    inputs = cosxl.training_inputs(x0, noise, t)
    torch.testing.assert_close(inputs.noisy, sched.precondition_inputs(x0 + sigma * noise, sigma))
    torch.testing.assert_close(cosxl.unet_timesteps(t.float()), sched.timesteps.flip(0)[t])
    torch.testing.assert_close(cosxl.clean_estimate(inputs.objective, inputs, t), x0)
    prediction = torch.randn(3, 4, 4, 4, generator=gen)
    torch.testing.assert_close(cosxl.clean_estimate(prediction, inputs, t),
                               sched.precondition_outputs(x0 + sigma * noise, prediction, sigma))
    torch.testing.assert_close(inputs.signal.flatten(), 1 / (1 + edm.sigmas[t] ** 2))
    # sampling timesteps sit among the training ones (rows carry these positions: brush's time parts, fit noise)
    sched.set_timesteps(7)
    positions = cosxl.sampling_position(sched.timesteps)
    assert positions[0] == 999 and positions[-1] == 0 and (positions.diff() < 0).all()
    torch.testing.assert_close(cosxl.unet_timesteps(positions), sched.timesteps)


def night_pairs():
    return [scene(0), scene(1)], [scene(0, night=True), scene(1, night=True)]


METHODS = {"visii": dict(lr=5e-2, clip_weight=0), "brush": dict(lr=5e-2, parts=2), "lora": dict(lr=1e-2)}


@pytest.mark.parametrize("which,method", [("sdxl", "visii"), ("sdxl", "brush"), ("sdxl", "lora"),
                                          ("cosxl", "brush")])
def test_each_method_learns_saves_loads_mixes_and_applies(which, method, request, tmp_path):
    from conftest import make_trainer
    from test_visii import mean_loss

    from invert.instruction import Instruction
    from invert.methods import method_class, settings_for

    editor = request.getfixturevalue(which)
    options = METHODS[method]
    befores, afters = night_pairs()
    settings, method_settings = settings_for(method, {**options, "steps": 8, "val_every": 0})
    learned = method_class(method).initialize(editor, editor.encode_text(["make it night"]), "make it night",
                                              method_settings)
    start = {n: p.detach().clone() for n, p in learned.named_parameters()}
    trainer = make_trainer(editor, befores, afters, learned, steps=8, lr=options["lr"])
    loss = mean_loss(trainer, range(8))
    trainer.run(quiet=True)
    assert mean_loss(trainer, range(8)) < loss
    changed = {n for n, p in learned.named_parameters() if not torch.equal(p.detach(), start[n])}
    assert changed == set(start), "every learned tensor moves (VISII's: the tokens and SDXL's pooled vector)"
    if method == "visii":
        assert changed == {"learned", "pooled"}

    inst = fit(editor, method, steps=3, val_every=0, **options)
    inst.save(tmp_path / "a.inst")
    loaded = Instruction.load(tmp_path / "a.inst")
    assert loaded.meta.backbone == "sdxl-ip2p"
    image = scene(6)
    ours = invert.apply(inst, [image], editor=editor, steps=2)[0]
    assert np.array_equal(pixels(invert.apply(loaded, [image], editor=editor, steps=2)[0]), pixels(ours))
    other = fit(editor, method, steps=3, val_every=0, seed=1, **options)
    mixed = invert.apply([inst, other], [image], weights=[1.0, 0.0], editor=editor, steps=2)[0]
    assert np.abs(pixels(mixed) - pixels(ours)).max() <= 1, "a mix weighted 1, 0 is the first instruction"
    half = invert.apply([inst, other], [image], editor=editor, steps=2)[0]
    assert not np.array_equal(pixels(half), pixels(ours))


def test_a_default_lora_adapts_every_attention_projection_of_the_unet(sdxl):
    """Self- and cross-attention's to_q, to_k, to_v and to_out.0 in every transformer block, as diffusers' SDXL
    LoRA script targets them; each is trained (peft's B starts at zero)."""
    inst = fit(sdxl, "lora", steps=3, val_every=0, lr=1e-2)
    expected = {name for name, _ in sdxl.unet.named_modules()
                if re.search(r"\.attn[12]\.(to_q|to_k|to_v|to_out\.0)$", name)}
    trained = {k[len("unet."):].rpartition(".lora_")[0]: v for k, v in inst.tensors.items()
               if k.startswith("unet.") and ".lora_B." in k}
    assert len(expected) == 8 * len(sdxl.cross_attention_layers()) and set(trained) == expected  # 2 attentions a block
    assert all(v.abs().sum() > 0 for v in trained.values())
    assert inst.meta.extra["targets"] == ["to_q", "to_k", "to_v", "to_out.0"]


def test_exported_lora_loads_in_the_sdxl_pipeline_and_edits_as_apply(sdxl, sdxl_dir, tmp_path, run):
    inst = fit(sdxl, "lora", steps=3, val_every=0, lr=5e-2, guidance=4.0)
    inst.save(tmp_path / "lora.inst")
    image = scene(7)
    ours = invert.apply(inst, [image], editor=sdxl, steps=3, fresh_noise=True, seed=3)[0]
    r = run("export-lora", tmp_path / "lora.inst", "-o", tmp_path / "adapter.safetensors")
    assert r.exit_code == 0, r.output
    pipe = their_pipeline(sdxl_dir)
    call = dict(prompt="make it night", image=image, num_inference_steps=3, guidance_scale=4.0, height=RES,
                width=RES)
    plain = pipe(**call, generator=torch.Generator().manual_seed(3)).images[0]
    pipe.load_lora_weights(str(tmp_path / "adapter.safetensors"))
    theirs = pipe(**call, generator=torch.Generator().manual_seed(3)).images[0]
    assert np.abs(pixels(ours) - pixels(theirs)).max() <= 1, "the exported adapter edits as invert's apply does"
    assert np.abs(pixels(plain) - pixels(theirs)).max() > 8, "and the adapter matters"


@pytest.mark.parametrize("method", ["visii", "brush", "lora"])
def test_an_installed_instruction_edits_inside_the_users_own_sdxl_pipeline_call(sdxl, method):
    """invert.installed's keyword arguments carry the instruction's pooled vector (visii's learned one), which the
    SDXL pipeline needs beside the tokens: pipe(**arguments, image=...) edits as apply does, guided or not (brush's
    K/V routes follow the pipeline's own batch layout, read from its call)."""
    inst = fit(sdxl, method, steps=3, val_every=0, **METHODS[method])
    image = scene(7)
    text = load_method(inst, sdxl).conditioning(Rows.uniform(torch.zeros(1, dtype=torch.long), True), sdxl.uncond)
    for guidance in (4.0, 1.0):
        expected = invert.apply(inst, [image], editor=sdxl, steps=3, guidance=guidance, fresh_noise=True, seed=5)[0]
        with invert.installed(inst, sdxl.pipe) as arguments:
            mine = sdxl.pipe(**arguments, image=image, num_inference_steps=3, guidance_scale=guidance, height=RES,
                             width=RES, generator=torch.Generator().manual_seed(5)).images[0]
        assert np.array_equal(pixels(mine), pixels(expected))
    assert torch.equal(arguments["prompt_embeds"], text.embeds)
    assert torch.equal(arguments["pooled_prompt_embeds"], text.pooled)
    if method == "visii":
        assert not torch.equal(text.pooled, sdxl.encode_text(["make it night"]).pooled), "the learned pooled vector"
    assert "encode_prompt" not in sdxl.pipe.__dict__, "the pipeline is as it was after the block"


@pytest.mark.parametrize("which", ["sdxl", "cosxl"])
def test_reverse_fit_with_the_cycle_term_strength_and_hybrid_text(which, request):
    """The cycle term goes through the backbone's clean estimate and reconditioning (EDM's on CosXL)."""
    editor = request.getfixturevalue(which)
    inst = fit(editor, "visii", steps=3, val_every=0, lr=5e-2, reverse=True, cycle_weight=1.0)
    image = scene(6)
    forward = invert.apply(inst, [image], editor=editor, steps=2)[0]
    back = invert.apply(inst, [image], editor=editor, steps=2, reverse=True)[0]
    assert not np.array_equal(pixels(forward), pixels(back))
    # --noise fit: the fit's own noise of each sampling step's position (on EDM, a position among its sigmas)
    fixed = invert.apply(inst, [image], editor=editor, steps=2, noise="fit")[0]
    assert np.array_equal(pixels(fixed), pixels(invert.apply(inst, [image], editor=editor, steps=2, noise="fit")[0]))
    zero = load_method(inst, editor, strength=0.0)
    init = editor.encode_text(["make it night"])
    torch.testing.assert_close(zero.prompt_embeds(), init.embeds.float())
    torch.testing.assert_close(zero.pooled_vector(), init.pooled.float())
    hybrid = load_method(inst, editor, text="with snow")
    plain = load_method(inst, editor)
    assert torch.equal(hybrid.pooled_vector(), plain.pooled_vector()) and hybrid.eos == plain.eos
    assert not torch.equal(hybrid.prompt_embeds(), plain.prompt_embeds())


def test_exported_embeds_carry_the_pooled_vector_for_the_plain_sdxl_pipeline(sdxl, sdxl_dir, tmp_path, run):
    from safetensors.torch import load_file

    inst = fit(sdxl, "visii", steps=3, val_every=0, lr=5e-2)
    inst.save(tmp_path / "night.inst")
    r = run("export-embeds", tmp_path / "night.inst", "-o", tmp_path / "night.safetensors")
    assert r.exit_code == 0 and "(pooled_prompt_embeds, prompt_embeds)" in r.output, r.output
    image = scene(7)
    ours = invert.apply(inst, [image], editor=sdxl, steps=3, fresh_noise=True, seed=2)[0]
    theirs = their_pipeline(sdxl_dir)(**load_file(tmp_path / "night.safetensors"), image=image, num_inference_steps=3,
                                      guidance_scale=7.5, image_guidance_scale=1.5, height=RES, width=RES,
                                      generator=torch.Generator().manual_seed(2)).images[0]
    assert np.array_equal(pixels(ours), pixels(theirs))


def test_the_clip_direction_term_reads_the_text_encoder_of_its_width(sdxl):
    """SDXL's token sequence is CLIP ViT-L's 768 then bigG's 1280 (here 32 and 32): a CLIP model of one of those
    widths gets that encoder's part; the term's gradient reaches no other column."""
    from invert.errors import InvertError
    from invert.methods.settings import VisiiSettings
    from invert.methods.visii import Visii

    class Clip:  # the text projection of a CLIP model 32 wide
        name, text_width = "a 32-wide CLIP", 32
        projection = torch.randn(32, 8, generator=torch.Generator().manual_seed(0))

        def project_text(self, hidden):
            return hidden @ self.projection

    assert sdxl.text_segments == [32, 32]
    learned = Visii.initialize(sdxl, sdxl.encode_text(["make it night"]), "make it night", VisiiSettings())
    learned.set_clip_direction(Clip(), torch.nn.functional.normalize(torch.randn(1, 8), dim=-1))
    learned.extra_loss().backward()
    grad = learned.learned.grad
    assert grad[..., :32].abs().sum() > 0 and not grad[..., 32:].any() and learned.pooled.grad is None
    Clip.text_width = 48
    with pytest.raises(InvertError, match="text width 48, this model's text encoders 32, 32"):
        learned.set_clip_direction(Clip(), torch.zeros(1, 8))


@pytest.mark.parametrize("configs", ["sdxl-instructpix2pix", "cosxl-edit"])
def test_the_shipped_full_size_configs_on_the_meta_device(configs):
    """The full architecture from the shipped configs, no weights drawn: parameter counts, the layers brush
    reads, and one guided UNet call at 1024 px with SDXL's added conditions (shapes checked through the call)."""
    from invert.backbones.base import Conditioning
    from invert.backbones.ip2p import CONFIGS
    from invert.backbones.sdxl import SDXLInstructPix2Pix

    with torch.device("meta"):
        pipe = SDXLInstructPix2Pix.from_configs(CONFIGS / configs)
    counts = {name: sum(p.numel() for p in getattr(pipe, name).parameters())
              for name in ("unet", "vae", "text_encoder", "text_encoder_2")}
    assert counts == {"unet": 2_567_475_204, "vae": 83_653_863, "text_encoder": 123_060_480,
                      "text_encoder_2": 694_659_840}
    editor = SDXLInstructPix2Pix(pipe, configs, torch.device("meta"), torch.float32, fingerprint="meta")
    assert editor.text_segments == [768, 1280] and editor.resolution == 1024
    assert len(editor.cross_attention_layers()) == 70 and sum(editor.instruction_kv_layers().values()) == 83_200
    assert (editor.edm is not None) == (configs == "cosxl-edit") == editor.pipe.is_cosxl_edit
    if configs == "cosxl-edit":
        return  # the same UNet: one call checks the wiring
    groups = editor.guidance_groups()
    rows = Rows.of(groups, torch.tensor([500.0], device="meta"))
    latents = torch.zeros(1, 4, 128, 128, device="meta")
    c = Conditioning(torch.zeros(3, 77, 2048, device="meta"), None, torch.zeros(3, 1280, device="meta"))
    assert editor.predict(latents, latents, c, rows, groups).shape == (3, 4, 128, 128)


def test_the_cli_fits_inspects_applies_and_evaluates_on_an_sdxl_folder(sdxl_dir, tiny_model_dir, pairs_dir, run,
                                                                       tmp_path):
    """`--model FOLDER` picks the backbone; a default fit (the init search, the CLIP direction term, validation)
    runs on it; an instruction applied on another architecture is a one-line error."""
    inst = tmp_path / "night.inst"
    r = run("fit", pairs_dir, "-o", inst, "--model", sdxl_dir, "--resolution", RES, "--quiet", "--steps", 2,
            "--val-steps", 2)
    assert r.exit_code == 0, r.output
    meta = json.loads(run("inspect", inst, "--json").output)["meta"]
    assert meta["backbone"] == "sdxl-ip2p" and meta["clip_model"] == str(sdxl_dir / "clip") and meta["init_text"]
    r = run("apply", inst, pairs_dir / "before" / "0.png", "-o", tmp_path / "out", "--model", sdxl_dir, "--steps", 2)
    assert r.exit_code == 0 and len(list((tmp_path / "out").iterdir())) == 1, r.output
    r = run("eval", inst, pairs_dir, "--model", sdxl_dir, "--steps", 2, "--json")
    report = json.loads(r.output[r.output.index("{\n"):])  # after the progress lines (stderr, here mixed in)
    assert r.exit_code == 0 and report["mean"]["psnr"] > 0, r.output
    for extra in ((), ("--allow-model-mismatch",)):
        r = run("apply", inst, pairs_dir / "before" / "0.png", "-o", tmp_path / "ip2p", "--model", tiny_model_dir,
                *extra)
        assert r.exit_code == 1 and len(messages(r.output)) == 1, r.output
        assert not list((tmp_path / "ip2p").glob("*")), "no image written"
    assert "learned on a sdxl-ip2p model; this model is ip2p" in r.output
