"""InstructBrush on the tiny model: processors, time parts, conditional rows, fitting, mixing."""
import numpy as np
import torch
from diffusers import StableDiffusionInstructPix2PixPipeline

import invert
from invert.api import method_for
from invert.attention import BrushState, cross_attention_layers
from invert.fitting import Fitter, FitOptions, fit_images
from invert.instruction import mix
from invert.methods.brush import Brush

from conftest import float_noise, scene


def night(n=3):
    return [scene(i) for i in range(n)], [scene(i, night=True) for i in range(n)]


def test_untouched_kv_equals_plain_ip2p_on_the_init_text(editor, tiny_model_dir):
    prompt, seed = "make it night", 4
    inst = fit_images(editor, *night(1), "brush", FitOptions(steps=0, resolution=32, init_text=prompt), quiet=True)
    assert inst.tensors["brush.k"].shape[:2] == (5, 3), "5 parts x the init text's 3 tokens"
    image = scene(9)
    ours = invert.apply(inst, [image], editor=editor, fresh_noise=True, seed=seed, steps=4)[0]
    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(tiny_model_dir, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(prompt, image=image, num_inference_steps=4, generator=torch.Generator().manual_seed(seed)).images[0]
    diff = np.abs(np.asarray(ours, dtype=np.int16) - np.asarray(theirs, dtype=np.int16))
    assert diff.max() <= 1, diff.max()  # same math; K/V of positions 1..m computed in a separate matmul


def test_parts_switch_exactly_at_bin_edges():
    state = BrushState(parts=5, num_train_timesteps=1000)
    t = torch.tensor([0, 199, 199.99, 200, 399, 400, 799, 800, 999, 1000])
    assert state.part_of(t).tolist() == [0, 0, 0, 1, 1, 2, 3, 4, 4, 4]


def test_sampling_uses_the_part_of_the_current_timestep(editor):
    inst = fit_images(editor, *night(1), "brush", FitOptions(steps=0, resolution=32, init_text="night"), quiet=True)
    method = method_for(inst, editor)
    seen = []
    original = method.state.set_call

    def record(timestep, batch, device):
        original(timestep, batch, device)
        seen.append((float(torch.as_tensor(timestep).reshape(-1)[0]), method.state.part[0].item()))

    method.state.set_call = record
    from invert.sampling import sample

    sample(editor, method, [scene(3)], steps=10)
    assert len(seen) == 10
    for t, part in seen:
        assert part == min(4, int(t * 5 // 1000)), (t, part)
    assert {p for _, p in seen} == {0, 1, 2, 3, 4}


def test_only_the_conditional_rows_change(editor):
    method = Brush.initialize(editor, editor.encode_text(["make it night"]), init_text="make it night")
    with torch.no_grad():
        for k in method.keys + method.values:
            k.add_(torch.randn_like(k))
    x = torch.randn(3, 8, 16, 16)
    t = torch.tensor(500)
    uncond = editor.encode_text([""]).embeds
    embeds = torch.cat([method.text_embeds(t.view(1)), uncond, uncond])
    with torch.no_grad():
        plain = editor.unet(x, t, encoder_hidden_states=embeds).sample
        with method.sampling_context(editor):
            learned = editor.unet(x, t, encoder_hidden_states=embeds).sample
    assert not torch.allclose(plain[0], learned[0])
    assert torch.equal(plain[1:], learned[1:])
    assert len(cross_attention_layers(editor.unet)) == 4  # down 1, mid 1, up 2
    assert all(type(p).__name__ != "LearnedKVProcessor" for p in editor.unet.attn_processors.values()), \
        "processors are removed after the block"


def test_fitting_lowers_the_loss_and_moves_only_the_kv(editor):
    befores, afters = night()
    options = FitOptions(steps=40, lr=5e-2, resolution=32, init_text="make it night")
    fitter = Fitter(editor, befores, afters, options)
    method = Brush.initialize(editor, editor.encode_text([options.init_text]), init_text=options.init_text)
    unet_before = {k: v.clone() for k, v in editor.unet.state_dict().items()}
    keys_before = torch.stack(method.keys).clone()
    init_before = method.init.clone()
    fitter.schedule(method)
    with method.sampling_context(editor), torch.no_grad():
        before = sum(fitter.loss(method, s)[0].item() for s in range(40))
    fitter.run(method, quiet=True)
    with method.sampling_context(editor), torch.no_grad():
        after = sum(fitter.loss(method, s)[0].item() for s in range(40))
    assert after < before * 0.98, (before, after)
    assert not torch.equal(torch.stack(method.keys), keys_before)
    assert torch.equal(method.init, init_before)
    for k, v in editor.unet.state_dict().items():
        assert torch.equal(v, unet_before[k]), k


def test_batched_parts_schedule_matches_the_sequential_one():
    """Batched: one timestep from each part per step; sequential: the same timesteps, part after part."""
    class Stub(Brush):
        def __init__(self, sequential):
            self.keys, self.sequential = [None] * 5, sequential

    batched, sequential = Stub(False).schedule(400, 1000, 0), Stub(True).schedule(400, 1000, 0)
    assert batched.shape == (400, 5) and sequential.shape == (2000, 1)
    assert torch.equal(batched.T.reshape(-1), sequential[:, 0])
    for p in range(5):
        assert sorted(batched[:200, p].tolist()) == list(range(200 * p, 200 * (p + 1)))


def test_mixing_with_weights_one_zero_is_the_first(editor):
    a = fit_images(editor, *night(1), "brush", FitOptions(steps=3, lr=5e-2, resolution=32, init_text="night"),
                   quiet=True)
    b = fit_images(editor, *night(1), "brush", FitOptions(steps=3, lr=5e-2, resolution=32, init_text="night", seed=1),
                   quiet=True)
    mixed = mix([a, b], [1.0, 0.0])
    for key in a.tensors:
        assert torch.equal(mixed.tensors[key], a.tensors[key]), key
    half = mix([a, b], [0.5, 0.5])
    expected = (a.tensors["brush.k"] + b.tensors["brush.k"]) / 2  # a weighted sum rounds at the tensors' scale
    torch.testing.assert_close(half.tensors["brush.k"], expected, rtol=0, atol=float_noise(expected))
    image = scene(2)
    first = invert.apply(a, [image], editor=editor, steps=3)[0]
    again = invert.apply(mixed, [image], editor=editor, steps=3)[0]
    assert np.array_equal(np.asarray(first), np.asarray(again))


def test_strength_zero_gives_the_initial_kv(editor):
    inst = fit_images(editor, *night(1), "brush", FitOptions(steps=5, lr=5e-2, resolution=32, init_text="night"),
                      quiet=True)
    zero = method_for(inst, editor, strength=0.0)
    fresh = Brush.initialize(editor, editor.encode_text(["night"]), init_text="night")
    fresh_keys = torch.stack(fresh.keys)  # k0 + 0 (k - k0): k0 up to the rounding of fp32 arithmetic
    torch.testing.assert_close(torch.stack(zero.keys), fresh_keys, rtol=0, atol=float_noise(fresh_keys))
