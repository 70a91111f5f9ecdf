"""Applying an instruction samples exactly as diffusers' InstructPix2Pix pipeline does."""
import numpy as np
import pytest
import torch
from conftest import float_noise, scene, tiny_fit
from diffusers import StableDiffusionInstructPix2PixPipeline

import invert
from invert.api import load_method
from invert.backbones.rows import Rows
from invert.methods import method_names


def text_embeds(method, editor):
    return method.conditioning(Rows.uniform(torch.zeros(1, dtype=torch.long), True), editor.uncond).embeds


def pixels(img):
    return np.asarray(img, dtype=np.int16)


def test_unfitted_instruction_equals_the_diffusers_pipeline(editor, tiny_model_dir):
    """Invariant 1: --steps 0 --init-text P, then apply --fresh-noise --seed S --steps K == the pipeline on P."""
    prompt, seed, steps = "make it night", 11, 4
    inst = tiny_fit(editor, [scene(0)], [scene(0, night=True)], "visii", steps=0, init_text=prompt)
    image = scene(5)
    ours = invert.apply(inst, [image], editor=editor, fresh_noise=True, seed=seed, steps=steps)[0]
    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(tiny_model_dir, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(prompt, image=image, num_inference_steps=steps,
                  generator=torch.Generator().manual_seed(seed)).images[0]
    assert np.array_equal(pixels(ours), pixels(theirs))
    other = invert.apply(inst, [image], editor=editor, fresh_noise=True, seed=seed + 1, steps=steps)[0]
    assert not np.array_equal(pixels(ours), pixels(other))


def test_stored_noise_is_the_fits_own_and_reproducible(editor):
    inst = tiny_fit(editor, [scene(0)], [scene(0, night=True)], "visii", steps=3, init_text="make it night", seed=9)
    image = scene(6)
    first = invert.apply(inst, [image], editor=editor, steps=3)[0]
    again = invert.apply(inst, [image], editor=editor, steps=3)[0]
    fresh_same_seed = invert.apply(inst, [image], editor=editor, steps=3, fresh_noise=True, seed=9)[0]
    fresh_other = invert.apply(inst, [image], editor=editor, steps=3, fresh_noise=True, seed=0)[0]
    assert np.array_equal(pixels(first), pixels(again))
    # The stored noise is the stream of the fit's seed: the same as fresh noise drawn from that seed.
    assert np.array_equal(pixels(first), pixels(fresh_same_seed))
    assert not np.array_equal(pixels(first), pixels(fresh_other))


def test_hybrid_text_follows_the_learned_tokens(editor):
    inst = tiny_fit(editor, [scene(0)], [scene(0, night=True)], "visii", steps=2, init_text="make it night")
    plain = load_method(inst, editor)
    hybrid = load_method(inst, editor, text="with snow")
    a, b = text_embeds(plain, editor), text_embeds(hybrid, editor)
    eos = plain.eos
    extra = editor.encode_text(["with snow"])
    n = extra.eos[0]
    assert torch.equal(a[:, :eos + 2], b[:, :eos + 2]), "learned tokens and the EOS stay"
    torch.testing.assert_close(b[:, eos + 2:eos + 2 + n], extra.embeds[:, :n])
    assert torch.equal(a[:, eos + 2 + n:], b[:, eos + 2 + n:])


def test_strength_zero_is_the_init_text(editor):
    inst = tiny_fit(editor, [scene(0)], [scene(0, night=True)], "visii", steps=5, lr=5e-2, init_text="make it night")
    zero = text_embeds(load_method(inst, editor, strength=0.0), editor)
    torch.testing.assert_close(zero, editor.encode_text(["make it night"]).embeds)
    one = text_embeds(load_method(inst, editor, strength=1.0), editor)
    two = text_embeds(load_method(inst, editor, strength=2.0), editor)
    # base + s (learned - base) in fp32: each side rounds at the scale of the embeddings (see float_noise).
    torch.testing.assert_close(two - one, one - zero, rtol=0, atol=float_noise(zero, one, two))


def test_apply_with_a_users_own_pipeline(editor):
    inst = tiny_fit(editor, [scene(1)], [scene(1, night=True)], "visii", steps=1, init_text="make it night",
                    clip_weight=0)
    image = scene(7)
    expected = invert.apply(inst, [image], editor=editor, steps=2)[0]
    mine = invert.apply(inst, image, pipe=editor.pipe, steps=2)  # one image in, one image out
    assert np.array_equal(np.asarray(mine), np.asarray(expected))
    assert len(invert.apply(inst, [image, image], editor=editor, steps=2, text="with stars")) == 2


@pytest.mark.parametrize("method", method_names())
def test_an_installed_instruction_edits_inside_the_users_own_pipeline_call(editor, method):
    options = {"clip_weight": 0} if method == "visii" else {}
    inst = tiny_fit(editor, [scene(1)], [scene(1, night=True)], method, steps=3, lr=5e-2, init_text="make it night",
                    **options)
    image = scene(7)
    expected = invert.apply(inst, [image], editor=editor, steps=3, guidance=4.0, fresh_noise=True, seed=5)[0]
    plain = editor.pipe(prompt="make it night", image=image, num_inference_steps=3, guidance_scale=4.0,
                        generator=torch.Generator().manual_seed(5)).images[0]
    with invert.installed(inst, editor.pipe) as arguments:
        assert list(arguments) == ["prompt_embeds"], "IP2P's pipeline takes no pooled vector"
        mine = editor.pipe(**arguments, image=image, num_inference_steps=3, guidance_scale=4.0,
                           generator=torch.Generator().manual_seed(5)).images[0]
    assert np.array_equal(np.asarray(mine), np.asarray(expected))
    assert not np.array_equal(np.asarray(plain), np.asarray(expected)), "the learned instruction must matter"
    after = editor.pipe(prompt="make it night", image=image, num_inference_steps=3, guidance_scale=4.0,
                        generator=torch.Generator().manual_seed(5)).images[0]
    assert np.array_equal(np.asarray(after), np.asarray(plain)), "the pipeline is as it was after the block"


def test_exported_embeds_edit_in_a_plain_diffusers_pipeline(editor, tiny_model_dir, tmp_path, run):
    """README's two lines: load the exported prompt_embeds and call the pipeline with them."""
    from safetensors.torch import load_file

    inst = tiny_fit(editor, [scene(1)], [scene(1, night=True)], "visii", steps=3, lr=5e-2, init_text="make it night")
    inst.save(tmp_path / "night.inst")
    r = run("export-embeds", tmp_path / "night.inst", "-o", tmp_path / "night_embeds.safetensors")
    assert r.exit_code == 0 and "prompt_embeds" in r.output, r.output
    image = scene(7)
    ours = invert.apply(inst, image, editor=editor, steps=3, fresh_noise=True, seed=2)
    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(tiny_model_dir, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(prompt_embeds=load_file(tmp_path / "night_embeds.safetensors")["prompt_embeds"], image=image,
                  num_inference_steps=3, generator=torch.Generator().manual_seed(2)).images[0]
    exported = load_file(tmp_path / "night_embeds.safetensors")["prompt_embeds"]
    assert torch.equal(exported, text_embeds(load_method(inst, editor), editor)), "the embedding apply conditions with"
    assert np.array_equal(pixels(ours), pixels(theirs))
    brush = tiny_fit(editor, [scene(1)], [scene(1, night=True)], "brush", steps=0, init_text="make it night")
    brush.save(tmp_path / "brush.inst")
    r = run("export-embeds", tmp_path / "brush.inst", "-o", tmp_path / "x.safetensors")
    assert r.exit_code == 1 and "a brush instruction has no 'embeds' export" in r.output
