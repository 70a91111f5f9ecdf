"""Applying an instruction samples exactly as diffusers' InstructPix2Pix pipeline does."""
import numpy as np
import pytest
import torch
from diffusers import StableDiffusionInstructPix2PixPipeline

import invert
from invert.fitting import FitOptions, fit_images

from conftest import float_noise, scene


def pixels(img):
    return np.asarray(img, dtype=np.int16)


def test_unfitted_instruction_equals_the_diffusers_pipeline(editor, tiny_model_dir):
    """Invariant 1: --steps 0 --init-text P, then apply --fresh-noise --seed S --steps K == the pipeline on P."""
    prompt, seed, steps = "make it night", 11, 4
    inst = fit_images(editor, [scene(0)], [scene(0, night=True)], "visii",
                      FitOptions(steps=0, resolution=32, init_text=prompt), quiet=True)
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
    inst = fit_images(editor, [scene(0)], [scene(0, night=True)], "visii",
                      FitOptions(steps=3, resolution=32, init_text="make it night", seed=9), quiet=True)
    image = scene(6)
    first = invert.apply(inst, [image], editor=editor, steps=3)[0]
    again = invert.apply(inst, [image], editor=editor, steps=3)[0]
    fresh_same_seed = invert.apply(inst, [image], editor=editor, steps=3, fresh_noise=True, seed=9)[0]
    fresh_other = invert.apply(inst, [image], editor=editor, steps=3, fresh_noise=True, seed=0)[0]
    assert np.array_equal(pixels(first), pixels(again))
    # The stored noise is the stream of the fit's seed: the same as fresh noise drawn from that seed.
    assert np.array_equal(pixels(first), pixels(fresh_same_seed))
    assert not np.array_equal(pixels(first), pixels(fresh_other))


def test_batch_results_do_not_depend_on_the_batch(editor):
    inst = fit_images(editor, [scene(0)], [scene(0, night=True)], "visii",
                      FitOptions(steps=0, resolution=32, init_text="make it night"), quiet=True)
    images = [scene(7), scene(8)]
    together = invert.apply(inst, images, editor=editor, steps=2)
    alone = [invert.apply(inst, [img], editor=editor, steps=2)[0] for img in images]
    for a, b in zip(together, alone):
        assert np.abs(pixels(a) - pixels(b)).max() <= 1


def test_hybrid_text_follows_the_learned_tokens(editor):
    from invert.api import method_for

    inst = fit_images(editor, [scene(0)], [scene(0, night=True)], "visii",
                      FitOptions(steps=2, resolution=32, init_text="make it night"), quiet=True)
    plain = method_for(inst, editor)
    hybrid = method_for(inst, editor, text="with snow")
    t = torch.zeros(1, dtype=torch.long)
    a, b = plain.text_embeds(t), hybrid.text_embeds(t)
    eos = plain.eos
    extra = editor.encode_text(["with snow"])
    n = extra.eos[0]
    assert torch.equal(a[:, :eos + 2], b[:, :eos + 2]), "learned tokens and the EOS stay"
    torch.testing.assert_close(b[:, eos + 2:eos + 2 + n], extra.embeds[:, :n])
    assert torch.equal(a[:, eos + 2 + n:], b[:, eos + 2 + n:])


def test_strength_zero_is_the_init_text(editor):
    from invert.api import method_for

    inst = fit_images(editor, [scene(0)], [scene(0, night=True)], "visii",
                      FitOptions(steps=5, lr=5e-2, resolution=32, init_text="make it night"), quiet=True)
    t = torch.zeros(1, dtype=torch.long)
    zero = method_for(inst, editor, strength=0.0).text_embeds(t)
    torch.testing.assert_close(zero, editor.encode_text(["make it night"]).embeds)
    one = method_for(inst, editor, strength=1.0).text_embeds(t)
    two = method_for(inst, editor, strength=2.0).text_embeds(t)
    # base + s (learned - base) in fp32: each side rounds at the scale of the embeddings (see float_noise).
    torch.testing.assert_close(two - one, one - zero, rtol=0, atol=float_noise(zero, one, two))


def test_instruction_apply_with_a_users_own_pipeline(editor):
    import numpy as np

    import invert
    from invert.fitting import FitOptions, fit_images

    from conftest import float_noise, scene

    inst = fit_images(editor, [scene(1)], [scene(1, night=True)], "visii",
                      FitOptions(steps=1, resolution=32, init_text="make it night", clip_weight=0), quiet=True)
    image = scene(7)
    expected = invert.apply(inst, [image], editor=editor, steps=2)[0]
    mine = inst.apply(image, pipe=editor.pipe, steps=2)  # one image in, one image out
    assert np.array_equal(np.asarray(mine), np.asarray(expected))
    assert len(inst.apply([image, image], editor=editor, steps=2, text="with stars")) == 2


@pytest.mark.parametrize("method", ["visii", "brush", "lora"])
def test_an_installed_instruction_edits_inside_the_users_own_pipeline_call(editor, method):
    inst = fit_images(editor, [scene(1)], [scene(1, night=True)], method,
                      FitOptions(steps=3, lr=5e-2, resolution=32, init_text="make it night", clip_weight=0), quiet=True)
    image = scene(7)
    expected = invert.apply(inst, [image], editor=editor, steps=3, guidance=4.0, fresh_noise=True, seed=5)[0]
    plain = editor.pipe(prompt="make it night", image=image, num_inference_steps=3, guidance_scale=4.0,
                        generator=torch.Generator().manual_seed(5)).images[0]
    with inst.installed(editor.pipe) as embeds:
        mine = editor.pipe(prompt_embeds=embeds, image=image, num_inference_steps=3, guidance_scale=4.0,
                           generator=torch.Generator().manual_seed(5)).images[0]
    assert np.array_equal(np.asarray(mine), np.asarray(expected))
    assert not np.array_equal(np.asarray(plain), np.asarray(expected)), "the learned instruction must matter"
    after = editor.pipe(prompt="make it night", image=image, num_inference_steps=3, guidance_scale=4.0,
                        generator=torch.Generator().manual_seed(5)).images[0]
    assert np.array_equal(np.asarray(after), np.asarray(plain)), "the pipeline is as it was after the block"
