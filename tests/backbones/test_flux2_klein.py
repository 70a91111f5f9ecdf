"""FLUX.2 [klein] (Flux2KleinPipeline) on tiny components: the untrained instruction is the pipeline's own output,
every method fits, saves, loads, mixes and applies, brush's K/V routes and a user's own pipeline, the LoRA export
in plain diffusers, the prompt's span in the chat template, the training noise levels, and the shipped full-size
configs on the meta device."""
import numpy as np
import pytest
import torch
from conftest import scene
from flux_checks import (DOUBLE_STREAM_ATTENTION, KLEIN_TEXT,
                         check_fitting_lowers_the_loss_and_moves_only_the_learned_state, check_full_size_configs,
                         check_installed_and_exported_embeds_edit_as_apply, check_lora_adapts_the_attention,
                         check_lora_export_loads_in_diffusers, check_low_memory_computes_the_same_gradients,
                         check_reverse_and_hybrid, check_routes_compute_what_the_layers_do,
                         check_saved_loaded_mixed_and_applied, check_text_kv_follow_the_timestep,
                         check_untrained_apply_is_the_pipeline, fit, night, pixels, save, tiny_klein)

import invert
from invert.backbones import load_editor
from invert.backbones.flux2_klein import KLEIN_CONFIGS, Flux2Klein

CALL = {"max_sequence_length": KLEIN_TEXT["max_sequence_length"],
        "text_encoder_out_layers": tuple(KLEIN_TEXT["text_encoder_out_layers"])}


@pytest.fixture(scope="session")
def klein_dir(tmp_path_factory):
    return save(tiny_klein(), tmp_path_factory.mktemp("tiny-klein"), KLEIN_TEXT)


@pytest.fixture(scope="session")
def klein(klein_dir):
    return load_editor(str(klein_dir), device="cpu", dtype="fp32")


@pytest.fixture(scope="session")
def pipe(klein_dir):
    """The user's own diffusers pipeline of the same folder."""
    from diffusers import Flux2KleinPipeline

    pipe = Flux2KleinPipeline.from_pretrained(klein_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_the_folder_loads_as_klein_with_its_own_text_settings(klein):
    assert isinstance(klein, Flux2Klein) and klein.name == "flux2-klein"
    assert klein.text_positions == 32 and klein.text_layers == (1, 2, 3) and klein.text_width == 3 * 16
    assert klein.resolution == 32 and klein.size_multiple == 4


def test_the_instruction_starts_after_the_chat_prefix_and_ends_at_im_end(klein):
    enc = klein.encode_text(["make the sky red", ""])
    tokens = klein.tokenizer.convert_ids_to_tokens(
        klein.tokenizer(klein._chat("make the sky red"), padding="max_length", max_length=32).input_ids)
    assert "".join(tokens[:enc.start]).endswith("Ċ") and tokens[enc.start - 5] == "<|im_start|>"
    assert "".join(tokens[enc.start:enc.eos[0]]).replace("Ġ", " ") == "make the sky red"
    assert tokens[enc.eos[0]] == "<|im_end|>" and enc.eos[1] == enc.start == klein.instruction_start
    assert enc.embeds.shape == (2, 32, 48)


def test_untrained_apply_is_the_pipeline_with_and_without_cfg(klein, pipe):
    check_untrained_apply_is_the_pipeline(klein, pipe, (4.0, 1.0), **CALL)


def test_a_distilled_model_runs_the_prompt_alone(tmp_path):
    distilled = load_editor(str(save(tiny_klein(distilled=True), tmp_path, KLEIN_TEXT)), device="cpu", dtype="fp32")
    assert distilled.groups(4.0, 1.5) == distilled.guidance_groups() == distilled.groups(1.0, 1.5)
    assert len(distilled.guidance_groups()) == 1


def test_training_noise_levels_are_the_samplers_shifted_sigmas(klein):
    values = klein.timestep_values(torch.arange(1000))
    assert float(values[-1]) == 1000.0 and bool((values[1:] > values[:-1]).all()) and float(values[0]) > 0
    # the sampler at the model's resolution (32 px: 8x8 tokens) and 20 steps: its unshifted sigmas, multiples of
    # 1/20, are among the training's (i + 1) / 1000, so each of its timesteps is a training timestep
    sched = klein.scheduler_sigmas(20, (klein.resolution // klein.size_multiple) ** 2)
    for t in sched.timesteps:
        assert float((values - t).abs().min()) < 1e-3, t


@pytest.mark.parametrize("method", ["visii", "brush", "lora"])
def test_each_method_fits(klein, method):
    check_fitting_lowers_the_loss_and_moves_only_the_learned_state(klein, method)


@pytest.mark.parametrize("method", ["visii", "brush", "lora"])
def test_each_method_saves_loads_mixes_and_applies(klein, method, tmp_path):
    check_saved_loaded_mixed_and_applied(klein, method, tmp_path)


def test_brush_routes_compute_what_the_layers_do(klein):
    check_routes_compute_what_the_layers_do(klein)
    check_text_kv_follow_the_timestep(klein)


def test_low_memory_computes_the_gradients_of_a_plain_fit(klein):
    check_low_memory_computes_the_same_gradients(klein)


def test_a_brush_instruction_in_a_users_own_pipeline_edits_as_apply(klein, pipe):
    """The user's pipeline calls the transformer on the prompt, then on the empty prompt: the hook conditions
    the first call of each timestep only."""
    inst = fit(klein, "brush", steps=3, lr=5e-2, parts=2)
    image = scene(9, 64)
    ours = invert.apply(inst, [image], editor=klein, steps=3, fresh_noise=True, seed=4)[0]
    run = dict(image=image, num_inference_steps=3, guidance_scale=inst.meta.text_guidance, **CALL)
    with invert.installed(inst, pipe) as arguments:
        theirs = pipe(**arguments, **run, generator=torch.Generator().manual_seed(4)).images[0]
    plain = pipe(**arguments, **run, generator=torch.Generator().manual_seed(4)).images[0]
    assert np.array_equal(pixels(ours), pixels(theirs))
    assert not np.array_equal(pixels(plain), pixels(theirs)), "the learned K/V matter"


def test_installed_and_exported_embeds_edit_as_apply(klein, pipe, tmp_path):
    check_installed_and_exported_embeds_edit_as_apply(klein, pipe, tmp_path, **CALL)


def test_the_export_hint_names_the_pipelines_own_arguments(klein, tmp_path, run):
    """klein's pipeline has no image guidance: the call export-lora suggests is one its pipeline takes."""
    inst = fit(klein, "lora", steps=0)
    inst.save(tmp_path / "a.inst")
    r = run("export-lora", tmp_path / "a.inst", "-o", tmp_path / "a.safetensors")
    assert r.exit_code == 0, r.output
    assert f"image=..., guidance_scale={inst.meta.text_guidance}) as it was fitted" in r.output, r.output


def test_a_default_lora_adapts_the_attention_of_both_streams(klein):
    """klein's single-stream attention is fused (queries, keys, values and the feed-forward input in one
    projection): the default LoRA adapts it and its output too, as diffusers' klein LoRA script does."""
    check_lora_adapts_the_attention(klein, {f"transformer_blocks.0.attn.{n}" for n in DOUBLE_STREAM_ATTENTION}
                                    | {f"single_transformer_blocks.0.attn.{n}" for n in ("to_qkv_mlp_proj", "to_out")})


def test_a_visii_file_that_does_not_say_where_its_tokens_start_is_not_exported(klein, tmp_path, run):
    """klein's first instruction position depends on its tokenizer's chat template: a file from before visii
    recorded it cannot be exported without the model (one line, nothing written)."""
    from dataclasses import replace

    from conftest import messages

    inst = fit(klein, "visii", steps=0)
    assert inst.meta.extra == {"start": klein.instruction_start}
    invert.Instruction("visii", inst.tensors, replace(inst.meta, extra=None)).save(tmp_path / "old.inst")
    r = run("export-embeds", tmp_path / "old.inst", "-o", tmp_path / "e.safetensors")
    assert r.exit_code == 1 and len(messages(r.output)) == 1, r.output
    assert "does not record where its learned tokens start" in r.output and not (tmp_path / "e.safetensors").exists()


def test_the_lora_export_loads_in_plain_diffusers(klein, pipe, tmp_path):
    check_lora_export_loads_in_diffusers(klein, pipe, tmp_path, 4.0, **CALL)


def test_reverse_and_hybrid_instructions(klein):
    check_reverse_and_hybrid(klein)


def test_the_full_size_configs_are_klein_base_4b():
    pipe = check_full_size_configs(Flux2Klein, KLEIN_CONFIGS, {"transformer": 3_875_544_576, "vae": 84_046_115,
                                                               "text_encoder": 4_022_468_096})
    assert not pipe.config.is_distilled and pipe.transformer.config.joint_attention_dim == 3 * 2560
    # the default LoRA's targets, matched as peft matches them: every attention Linear of the 5 double-stream
    # blocks (8 each) and of the 20 single-stream blocks (2 each), and nothing peft cannot adapt
    targets = Flux2Klein(pipe, "klein-4b", torch.device("meta"), torch.float32, fingerprint="meta").lora_targets
    matched = [m for name, m in pipe.transformer.named_modules()
               if any(name == t or name.endswith("." + t) for t in targets)]
    assert len(matched) == 5 * 8 + 20 * 2 and all(isinstance(m, torch.nn.Linear) for m in matched)


def test_the_command_line_fits_and_applies_with_the_architectures_defaults(run, klein_dir, pairs_dir, tmp_path):
    """invert fit on a klein folder takes klein's own defaults (its guidance, VISII without the CLIP term, which
    reads a CLIP text encoder's tokens); the .inst records the backbone; apply edits with it."""
    import json

    inst = tmp_path / "night.inst"
    r = run("fit", pairs_dir, "-o", inst, "--model", klein_dir, "--resolution", 32, "--steps", 2, "--init-text",
            "make it night", "--quiet")
    assert r.exit_code == 0, r.output
    meta = json.loads(run("inspect", inst, "--json").output)["meta"]
    assert meta["backbone"] == "flux2-klein" and meta["model_defaults"] == {"guidance": 4.0, "visii_clip_weight": 0.0}
    r = run("apply", inst, pairs_dir / "before" / "0.png", "-o", tmp_path / "out", "--steps", 2)
    assert r.exit_code == 0, r.output
    assert len(list((tmp_path / "out").glob("*.png"))) == 1


def test_toy_dit_names_the_toy_dit_folder_shipped_with_invert():
    from pathlib import Path

    from invert.backbones.model_info import resolve_model_path, toy_model_path, where
    from invert.errors import ModelLoadError

    path = toy_model_path("toy-dit")
    assert path == Path(invert.__file__).parent / "toy" / "dit" and "shipped with invert" in where("toy-dit")
    if (path / "model_index.json").exists():
        assert resolve_model_path("toy-dit") == str(path)
    else:
        with pytest.raises(ModelLoadError, match="benchmarks.toy_dit_train"):
            resolve_model_path("toy-dit")


def test_states_scored_on_the_same_pairs_compute_the_first_steps_text_free_row_once(klein):
    from conftest import check_states_share_the_first_steps_text_free_rows

    check_states_share_the_first_steps_text_free_rows(klein, *night(), "visii", guidance=4.0)
