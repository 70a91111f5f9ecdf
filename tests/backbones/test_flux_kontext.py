"""FLUX.1 Kontext (FluxKontextPipeline) on tiny components: the untrained instruction is the pipeline's own output,
every method fits, saves, loads, mixes and applies (VISII learning the pooled CLIP vector with the T5 tokens),
brush's K/V routes and a user's own pipeline, the LoRA export in plain diffusers, the T5 span, the distilled
guidance as the transformer's input, and the shipped full-size configs on the meta device."""
import numpy as np
import pytest
import torch
from conftest import scene
from flux_checks import (DOUBLE_STREAM_ATTENTION, KONTEXT_TEXT,
                         check_fitting_lowers_the_loss_and_moves_only_the_learned_state, check_full_size_configs,
                         check_installed_and_exported_embeds_edit_as_apply, check_lora_adapts_the_attention,
                         check_lora_export_loads_in_diffusers, check_low_memory_computes_the_same_gradients,
                         check_reverse_and_hybrid, check_routes_compute_what_the_layers_do,
                         check_saved_loaded_mixed_and_applied, check_text_kv_follow_the_timestep,
                         check_untrained_apply_is_the_pipeline, fit, pixels, save, tiny_kontext)

import invert
from invert.backbones import load_editor
from invert.backbones.flux_kontext import KONTEXT_CONFIGS, FluxKontext
from invert.backbones.rows import Rows

CALL = {"max_sequence_length": KONTEXT_TEXT["max_sequence_length"], "height": 64, "width": 64, "max_area": 64 * 64,
        "_auto_resize": False}


@pytest.fixture(scope="session")
def kontext_dir(tmp_path_factory):
    return save(tiny_kontext(), tmp_path_factory.mktemp("tiny-kontext"), KONTEXT_TEXT)


@pytest.fixture(scope="session")
def kontext(kontext_dir):
    return load_editor(str(kontext_dir), device="cpu", dtype="fp32")


@pytest.fixture(scope="session")
def pipe(kontext_dir):
    """The user's own diffusers pipeline of the same folder."""
    from diffusers import FluxKontextPipeline

    pipe = FluxKontextPipeline.from_pretrained(kontext_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_the_folder_loads_as_kontext(kontext):
    assert isinstance(kontext, FluxKontext) and kontext.name == "flux1-kontext"
    assert kontext.text_positions == 24 and kontext.text_width == 32 and kontext.size_multiple == 4


def test_the_instruction_is_t5s_tokens_up_to_its_eos(kontext):
    enc = kontext.encode_text(["make the sky red", ""])
    ids = kontext.pipe.tokenizer_2("make the sky red").input_ids
    assert enc.start == kontext.instruction_start == 0 and enc.eos == [len(ids) - 1, 0]
    assert enc.embeds.shape == (2, 24, 32) and enc.pooled.shape == (2, 32)


def test_untrained_apply_is_the_pipeline(kontext, pipe):
    check_untrained_apply_is_the_pipeline(kontext, pipe, (2.5, 1.0), **CALL)


def test_the_guidance_is_the_transformers_input(kontext):
    """Distilled guidance: one group, no combination; the scale changes the one prediction."""
    assert kontext.groups(7.5, 1.5) == kontext.guidance_groups() and len(kontext.guidance_groups()) == 1
    enc = kontext.encode_text(["make it night"])
    cond = kontext.condition([scene(1)])
    x = torch.randn(cond.shape, generator=torch.Generator().manual_seed(0))
    rows = Rows.uniform(torch.tensor([500.0]), True)
    from invert.backbones.base import Conditioning

    c = Conditioning(enc.embeds, None, enc.pooled)
    with torch.no_grad():
        low, high = (kontext.predict(x, cond, c, rows, kontext.guidance_groups(), guidance=g) for g in (1.0, 4.0))
        default = kontext.predict(x, cond, c, rows, kontext.guidance_groups())
    assert not torch.allclose(low, high)
    assert torch.equal(default, kontext.predict(x, cond, c, rows, kontext.guidance_groups(), guidance=2.5))


@pytest.mark.parametrize("method", ["visii", "brush", "lora"])
def test_each_method_fits(kontext, method):
    moved = check_fitting_lowers_the_loss_and_moves_only_the_learned_state(kontext, method)
    if method == "visii":
        assert "pooled" in moved, "VISII learns CLIP's pooled vector too"


@pytest.mark.parametrize("method", ["visii", "brush", "lora"])
def test_each_method_saves_loads_mixes_and_applies(kontext, method, tmp_path):
    check_saved_loaded_mixed_and_applied(kontext, method, tmp_path)


def test_brush_routes_compute_what_the_layers_do(kontext):
    check_routes_compute_what_the_layers_do(kontext)
    check_text_kv_follow_the_timestep(kontext)


def test_low_memory_computes_the_gradients_of_a_plain_fit(kontext):
    check_low_memory_computes_the_same_gradients(kontext)


def test_a_brush_instruction_in_a_users_own_pipeline_edits_as_apply(kontext, pipe):
    """Kontext calls its transformer once per step, on the prompt: every call gets the instruction's K/V; the
    pipeline also needs the pooled vector, which invert.installed's arguments carry."""
    inst = fit(kontext, "brush", steps=3, lr=5e-2, parts=2)
    image = scene(9, 64)
    ours = invert.apply(inst, [image], editor=kontext, steps=3, fresh_noise=True, seed=4)[0]
    run = dict(image=image, num_inference_steps=3, guidance_scale=inst.meta.text_guidance, **CALL)
    with invert.installed(inst, pipe) as arguments:
        theirs = pipe(**arguments, **run, generator=torch.Generator().manual_seed(4)).images[0]
    plain = pipe(**arguments, **run, generator=torch.Generator().manual_seed(4)).images[0]
    assert np.array_equal(pixels(ours), pixels(theirs))
    assert not np.array_equal(pixels(plain), pixels(theirs)), "the learned K/V matter"


def test_installed_and_exported_embeds_carry_the_pooled_vector(kontext, pipe, tmp_path):
    check_installed_and_exported_embeds_edit_as_apply(kontext, pipe, tmp_path, **CALL)


def test_a_default_lora_adapts_the_attention_of_both_streams(kontext):
    """Kontext's single-stream blocks have their own to_q, to_k, to_v (their output is
    the block's proj_out, shared with the feed-forward): the default LoRA adapts every attention projection."""
    check_lora_adapts_the_attention(kontext, {f"transformer_blocks.0.attn.{n}" for n in DOUBLE_STREAM_ATTENTION}
                                    | {f"single_transformer_blocks.0.attn.{n}" for n in ("to_q", "to_k", "to_v")})


def test_the_lora_export_loads_in_plain_diffusers(kontext, pipe, tmp_path):
    check_lora_export_loads_in_diffusers(kontext, pipe, tmp_path, 2.5, **CALL)


def test_reverse_and_hybrid_instructions(kontext):
    check_reverse_and_hybrid(kontext)


def test_the_full_size_configs_are_kontext_dev():
    pipe = check_full_size_configs(FluxKontext, KONTEXT_CONFIGS, {
        "transformer": 11_901_408_320, "vae": 83_819_683, "text_encoder": 123_060_480,
        "text_encoder_2": 4_762_310_656})
    assert pipe.transformer.config.guidance_embeds and pipe.transformer.config.joint_attention_dim == 4096
