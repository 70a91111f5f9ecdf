"""InstructBrush on the tiny model: K/V modules per layer, time parts, explicit conditional rows, fitting, mixing."""
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import float_noise, make_trainer, scene, tiny_fit
from diffusers import StableDiffusionInstructPix2PixPipeline

import invert
from invert.api import load_method, mixed_method
from invert.backbones.rows import Rows
from invert.methods.brush import Brush
from invert.methods.settings import BrushSettings
from invert.schedules import part_timesteps, parts_schedule, time_part


def night(n=3):
    return [scene(i) for i in range(n)], [scene(i, night=True) for i in range(n)]


def pixels(img):
    return np.asarray(img, dtype=np.int16)


def test_untouched_kv_equals_plain_ip2p_on_the_init_text(editor, tiny_model_dir):
    prompt, seed = "make it night", 4
    inst = tiny_fit(editor, *night(1), "brush", steps=0, init_text=prompt)
    layers = editor.cross_attention_layers()
    assert inst.tensors[f"brush.{layers[0]}.k"].shape[:2] == (5, 3), "5 parts x the init text's 3 tokens"
    image = scene(9)
    ours = invert.apply(inst, [image], editor=editor, fresh_noise=True, seed=seed, steps=4)[0]
    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(tiny_model_dir, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(prompt, image=image, num_inference_steps=4, generator=torch.Generator().manual_seed(seed)).images[0]
    diff = np.abs(pixels(ours) - pixels(theirs))
    assert diff.max() <= 1, diff.max()  # same math; K/V of positions 1..m computed in a separate matmul


def test_parts_switch_exactly_at_bin_edges():
    t = torch.tensor([0, 199, 199.99, 200, 399, 400, 799, 800, 999, 1000])
    assert time_part(t, 5, 1000).tolist() == [0, 0, 0, 1, 1, 2, 3, 4, 4, 4]


@pytest.mark.parametrize("parts", [3, 5, 6, 7])
def test_every_part_trains_exactly_the_timesteps_it_is_used_at(parts):
    """One definition of a timestep's part for the schedule and the attention: with parts that do not divide
    1000 no timestep trains the wrong part, and every timestep (t = 996..999 with 6 parts included) is trained."""
    schedule = parts_schedule(1000, parts, 1000, seed=0, sequential=False)  # one pass over every part's range
    trained = set()
    for p in range(parts):
        column = schedule[:, p]
        assert (time_part(column, parts, 1000) == p).all(), f"part {p} trains timesteps of another part"
        trained |= set(column.tolist())
        assert set(part_timesteps(p, parts, 1000).tolist()) <= set(column.tolist())
    assert trained == set(range(1000))


def test_sampling_uses_the_part_of_the_current_timestep(editor):
    inst = tiny_fit(editor, *night(1), "brush", steps=0, init_text="night")
    method = load_method(inst, editor)
    seen = []
    original = method.call

    def record(rows):
        call = original(rows)
        seen.append((float(rows.timesteps[0]), int(call.part[0])))
        return call

    method.call = record
    from invert.sampling import sample

    sample(editor, method, [scene(3)], steps=10)
    assert len(seen) == 10
    for t, part in seen:
        assert part == min(4, int(t * 5 // 1000)), (t, part)
    assert {p for _, p in seen} == {0, 1, 2, 3, 4}


def randomized(editor, text="make it night"):
    method = Brush.initialize(editor, editor.encode_text([text]), text)
    with torch.no_grad():
        for p in method.parameters():
            p.add_(torch.randn_like(p))
    return method


def test_only_the_rows_marked_conditional_change(editor):
    method = randomized(editor)
    x = torch.randn(3, 8, 16, 16)
    t = torch.tensor([500] * 3)
    rows = Rows(torch.tensor([True, False, False]), t)
    c = method.conditioning(rows, editor.uncond)
    with torch.no_grad():
        plain = editor.unet(x, t, encoder_hidden_states=c.embeds).sample
        with method.installed():
            learned = editor.unet(x, t, encoder_hidden_states=c.embeds, cross_attention_kwargs=c.attention).sample
            unmarked = editor.unet(x, t, encoder_hidden_states=c.embeds).sample  # a call naming no instruction
    assert not torch.allclose(plain[0], learned[0])
    assert torch.equal(plain[1:], learned[1:])
    assert torch.equal(plain, unmarked)
    assert len(editor.cross_attention_layers()) == 4  # down 1, mid 1, up 2
    assert all(type(p).__name__ == "AttnProcessor2_0" for p in editor.unet.attn_processors.values()), \
        "the UNet's own processors are back after the block"


@pytest.mark.parametrize("images", [1, 2, 3])
def test_without_guidance_every_image_gets_the_instruction(editor, images):
    """Regression: at --guidance 1 the pipeline runs the text rows alone; every row is an image to edit with the
    learned K/V (it used to be a third of them, or a RuntimeError for 1-2 images)."""
    inst = tiny_fit(editor, *night(1), "brush", steps=0, init_text="make it night")
    method = load_method(inst, editor)
    with torch.no_grad():
        for p in method.parameters():
            p.add_(torch.randn_like(p))
    image = scene(4)
    from invert.sampling import sample

    alone = sample(editor, method, [image], steps=3, guidance=1.0)[0]
    together = sample(editor, method, [image] * images, steps=3, guidance=1.0)
    plain = sample(editor, load_method(inst, editor), [image], steps=3, guidance=1.0)[0]
    assert not np.array_equal(pixels(alone), pixels(plain)), "the learned K/V must matter"
    for result in together:
        assert np.abs(pixels(result) - pixels(alone)).max() <= 1


def test_fitting_lowers_the_loss_and_moves_only_the_kv(editor):
    from test_visii import mean_loss

    befores, afters = night()
    method = Brush.initialize(editor, editor.encode_text(["make it night"]), "make it night")
    trainer = make_trainer(editor, befores, afters, method, steps=10, lr=0.2)  # the loss falls 6%
    unet_before = {k: v.clone() for k, v in editor.unet.state_dict().items()}
    kv_before = {k: v.clone() for k, v in method.state_dict().items()}
    before = mean_loss(trainer, range(10))
    trainer.run(quiet=True)
    after = mean_loss(trainer, range(10))
    assert after < before * 0.98, (before, after)
    state = method.state_dict()
    assert torch.equal(state["init"], kv_before["init"])
    assert all(not torch.equal(state[k], kv_before[k]) for k in state if k != "init")
    for k, v in editor.unet.state_dict().items():
        assert torch.equal(v, unet_before[k]), k


def test_batched_parts_schedule_matches_the_sequential_one():
    """Batched: one timestep from each part per step; sequential: the same timesteps, part after part."""
    batched, sequential = parts_schedule(400, 5, 1000, 0, False), parts_schedule(400, 5, 1000, 0, True)
    assert batched.shape == (400, 5) and sequential.shape == (2000, 1)
    assert torch.equal(batched.T.reshape(-1), sequential[:, 0])
    for p in range(5):
        assert sorted(batched[:200, p].tolist()) == list(range(200 * p, 200 * (p + 1)))


def test_sequential_parts_train_alone_and_match_the_batched_fit(editor):
    """The paper's schedule: part p trains alone, with an optimizer of its own; the other parts do not move.
    Batched, each part's gradient is its own loss's, so both end at the same K/V (float noise apart)."""
    fits = {}
    for sequential in (False, True):
        fits[sequential] = tiny_fit(editor, *night(2), "brush", steps=4, lr=5e-2, init_text="make it night",
                                    parts=2, parts_sequential=sequential)
    start = tiny_fit(editor, *night(2), "brush", steps=0, init_text="make it night", parts=2)
    for key, value in fits[False].tensors.items():
        if key.endswith((".k", ".v")):
            moved = (value - start.tensors[key]).abs().max()
            assert moved > 1e-4
            assert (fits[True].tensors[key] - value).abs().max() <= 0.01 * moved, key

    method = Brush.initialize(editor, editor.encode_text(["make it night"]), "make it night",
                              BrushSettings(brush_parts=2, brush_parts_sequential=True))
    trainer = make_trainer(editor, *night(2), method, steps=3, lr=5e-2)
    first = trainer.stages[0]
    assert len(trainer.stages) == 2 and (first.start, first.stop) == (0, 3)
    assert {id(p) for p in first.parameters} == {id(layer.k[0]) for layer in method.layers.values()} | \
        {id(layer.v[0]) for layer in method.layers.values()}


def test_mixing_with_weights_one_zero_is_the_first(editor):
    a = tiny_fit(editor, *night(1), "brush", steps=3, lr=5e-2, init_text="night")
    b = tiny_fit(editor, *night(1), "brush", steps=3, lr=5e-2, init_text="night", seed=1)
    mixed = mixed_method([a, b], editor, [1.0, 0.0])
    first = load_method(a, editor)
    for key, value in first.tensors().items():
        torch.testing.assert_close(mixed.tensors()[key], value, rtol=0, atol=0)
    half = mixed_method([a, b], editor, [0.5, 0.5]).tensors()
    key = next(k for k in half if k.endswith(".k"))
    expected = (a.tensors[key] + b.tensors[key]) / 2  # a weighted sum rounds at the tensors' scale
    torch.testing.assert_close(half[key], expected, rtol=0, atol=float_noise(expected))
    image = scene(2)
    alone = invert.apply(a, [image], editor=editor, steps=3)[0]
    again = invert.apply([a, b], [image], weights=[1.0, 0.0], editor=editor, steps=3)[0]
    assert np.array_equal(pixels(alone), pixels(again))


def test_mix_of_different_token_counts_equals_the_explicit_widening(editor):
    """Regression: instructions initialized from texts of 5 and 9 tokens mix; the mix equals mixing the
    5-token one widened to 9 by hand."""
    a = tiny_fit(editor, *night(1), "brush", steps=2, lr=5e-2, init_text="make it a dark blue")
    b = tiny_fit(editor, *night(1), "brush", steps=2, lr=5e-2, init_text="turn the bright sunny day into a dark night")
    ma, mb = load_method(a, editor), load_method(b, editor)
    assert (ma.num_tokens, mb.num_tokens) == (5, 9)
    mixed = mixed_method([a, b], editor, [0.3, 0.7])
    explicit = Brush.mix([ma.widen(9), mb], [0.3, 0.7])
    for key, value in explicit.tensors().items():
        torch.testing.assert_close(mixed.tensors()[key], value, rtol=0, atol=0)
    result = invert.apply([a, b], [scene(3)], weights=[0.3, 0.7], editor=editor, steps=2)[0]
    assert result.size == (32, 32)


def test_a_widened_instruction_edits_alike(editor):
    inst = tiny_fit(editor, *night(1), "brush", steps=2, lr=5e-2, init_text="make it night")
    method = load_method(inst, editor)
    from invert.sampling import sample

    image = scene(6)
    a = sample(editor, method, [image], steps=2)[0]
    b = sample(editor, method.widen(method.num_tokens + 4), [image], steps=2)[0]
    assert np.abs(pixels(a) - pixels(b)).max() <= 1, "at most one level of rounding"


def test_strength_zero_gives_the_initial_kv(editor):
    inst = tiny_fit(editor, *night(1), "brush", steps=5, lr=5e-2, init_text="night")
    zero = load_method(inst, editor, strength=0.0).state_dict()
    fresh = Brush.initialize(editor, editor.encode_text(["night"]), "night").state_dict()
    for key, value in fresh.items():  # k0 + 0 (k - k0): k0 up to the rounding of fp32 arithmetic
        torch.testing.assert_close(zero[key], value, rtol=0, atol=float_noise(value))


def test_version_1_files_load_as_the_same_instruction(editor, tmp_path):
    """A file written by version 1 (one (parts, m, sum of widths) tensor and the widths in extra.layers)
    loads to the K/V of each layer."""
    inst = tiny_fit(editor, *night(1), "brush", steps=2, lr=5e-2, init_text="make it night")
    layers = editor.cross_attention_layers()
    v1 = {k: v for k, v in inst.tensors.items() if not k.endswith((".k", ".v"))}
    v1["brush.k"] = torch.cat([inst.tensors[f"brush.{n}.k"] for n in layers], dim=-1)
    v1["brush.v"] = torch.cat([inst.tensors[f"brush.{n}.v"] for n in layers], dim=-1)
    widths = [[n, inst.tensors[f"brush.{n}.k"].shape[-1]] for n in layers]
    old = invert.Instruction("brush", v1, replace(inst.meta, extra={**inst.meta.extra, "layers": widths}))
    for key, value in load_method(inst, editor).state_dict().items():
        assert torch.equal(load_method(old, editor).state_dict()[key], value), key
