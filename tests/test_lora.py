"""--method lora on the tiny model: peft's adapter comes and goes, -Delta of a zero adapter is the identity, the
fit is reproducible (with and without --low-memory), mixing is exact, and an exported adapter gives the same image
in a plain diffusers pipeline."""
import pytest
import torch
from conftest import float_noise, make_trainer, scene, tiny_fit

import invert
from invert.api import mixed_method
from invert.backbones.rows import Rows
from invert.errors import InstructionFileError, InvertError
from invert.instruction import Instruction, Metadata
from invert.methods.lora import Lora
from invert.methods.settings import LoraSettings


def night_pairs(n=3):
    return [scene(i) for i in range(n)], [scene(i, night=True) for i in range(n)]


def unet_out(editor, method=None, reverse=False, seed=0):
    """The UNet's noise prediction on fixed inputs, with ``method``'s adapter (or none)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 8, 16, 16, generator=gen)
    embeds = editor.encode_text(["", "make it night"]).embeds
    t = torch.tensor([10, 700])
    with torch.no_grad():
        if method is None:
            return editor.unet(x, t, encoder_hidden_states=embeds).sample
        with method.installed(), method.direction(reverse):
            return editor.unet(x, t, encoder_hidden_states=embeds).sample


def randomized(editor, seed=1, **settings):
    """A Lora whose B is non-zero, so that it changes the UNet."""
    lora = Lora.initialize(editor, editor.encode_text([""]), "", LoraSettings(**settings), seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key in lora.keys:
            if ".lora_B." in key:
                w = lora.weight(key)
                w.copy_(torch.randn(w.shape, generator=gen) * 0.3)
    return lora


def as_instruction(lora, editor, **meta):
    return Instruction("lora", lora.tensors(), {"extra": lora.extra_meta(), "init_text": "",
                                                "model_fingerprint": editor.fingerprint, **meta})


def test_zero_adapter_and_its_negation_are_the_identity_and_the_unet_is_restored(editor):
    names = [n for n, _ in editor.unet.named_parameters()]
    base = unet_out(editor)
    lora = Lora.initialize(editor, editor.encode_text([""]))
    assert lora.keys and all(not lora.weight(k).any() for k in lora.keys if ".lora_B." in k)
    assert torch.equal(unet_out(editor, lora), base)
    assert torch.equal(unet_out(editor, lora, reverse=True), base)
    assert not lora.changes_text_free_rows(), "so sampling may reuse the rows the model computes without it"
    changed = randomized(editor)
    assert changed.changes_text_free_rows()
    plus, minus = unet_out(editor, changed), unet_out(editor, changed, reverse=True)
    assert not torch.allclose(plus, base, atol=1e-4) and not torch.allclose(minus, plus, atol=1e-4)
    assert [n for n, _ in editor.unet.named_parameters()] == names, "the adapter must be removed afterwards"
    assert torch.equal(unet_out(editor), base)
    assert not getattr(editor.unet, "peft_config", None)


def test_fit_learns_only_the_adapter_reproducibly(editor, clip):
    from test_visii import mean_loss

    befores, afters = night_pairs()
    fingerprint = editor.fingerprint
    lora = Lora.initialize(editor, editor.encode_text([""]), "", LoraSettings(lora_reverse="off"))
    trainer = make_trainer(editor, befores, afters, lora, steps=10, lr=1e-2)  # the loss falls 5%
    start = mean_loss(trainer, range(10))
    trainer.run(quiet=True)
    assert mean_loss(trainer, range(10)) < start * 0.98
    assert any(lora.weight(k).any() for k in lora.keys if ".lora_B." in k)
    assert editor.fingerprint == fingerprint and not getattr(editor.unet, "peft_config", None)
    # --init auto: lora's own init, the empty prompt (the default, --init best, may choose a worded one)
    a = tiny_fit(editor, befores, afters, "lora", clip=clip, steps=4, lr=1e-2, init="auto")
    b = tiny_fit(editor, befores, afters, "lora", clip=clip, steps=4, lr=1e-2, init="auto")
    assert a.meta.init_text == "" and a.meta.extra["rank"] == 4
    assert all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)
    assert any(k.startswith("unet.") and k.endswith("attn2.to_k.lora_A.weight") for k in a.tensors)


def step_gradients(editor, method, befores, afters, steps, low_memory, **settings):
    """Each step's gradients of ``method``'s parameters at the initial values, the UNet recomputing its forward
    pass in the backward pass (gradient checkpointing) or not."""
    trainer = make_trainer(editor, befores, afters, method, steps=max(steps) + 1, **settings)
    editor.set_low_memory(low_memory)
    out = []
    try:
        with method.installed():
            for step in steps:
                method.zero_grad(set_to_none=True)
                trainer.step_loss(step, lambda loss: loss)
                out.append({n: p.grad.clone() for n, p in method.named_parameters() if p.grad is not None})
    finally:
        editor.set_low_memory(False)
    return out


def assert_same_gradients(plain, low):
    for a, b in zip(plain, low):
        assert a.keys() == b.keys() and a
        for name, g in a.items():
            # The recomputed forward pass sums in another order (measured: up to 1.2e-4 of the tensor's largest
            # gradient); recomputed in the wrong direction, the gradient is another function's (differences of
            # the order of the gradient itself).
            torch.testing.assert_close(b[name], g, rtol=0, atol=1e-3 * float(g.abs().max()) + 1e-12)


@pytest.mark.parametrize("mode", ["swap", "both"])
def test_low_memory_computes_the_gradients_of_a_plain_fit(editor, mode):
    """Regression: gradient checkpointing recomputes the forward pass in the backward pass; a reverse term
    must be recomputed with -Delta too (it was recomputed with +Delta: learned tensors differed by up to 0.04 of
    0.06 after 6 steps)."""
    befores, afters = night_pairs(2)
    lora = randomized(editor, lora_reverse=mode)
    lora.schedule(8, 1000, 0)
    steps = [0, 1, 2]
    terms = {reverse for s in steps for reverse, _ in lora.loss_terms(s)}
    assert terms == {False, True}, "steps of both directions"
    plain, low = (step_gradients(editor, lora, befores, afters, steps, low, lr=1e-2) for low in (False, True))
    assert_same_gradients(plain, low)


def test_low_memory_refuses_the_cycle_term_of_a_lora_reverse_fit(editor, clip):
    editor.set_low_memory(True)
    try:
        with pytest.raises(InvertError, match="--low-memory cannot fit a lora instruction with --reverse"):
            tiny_fit(editor, *night_pairs(1), "lora", clip=clip, steps=1, reverse=True, init_text="")
        tiny_fit(editor, *night_pairs(1), "lora", clip=clip, steps=1, reverse=True, cycle_weight=0.0, init_text="")
    finally:
        editor.set_low_memory(False)


def test_lora_reverse_swaps_the_pair_order_at_random_and_both_adds_a_term(editor):
    swap = Lora.initialize(editor, editor.encode_text([""]))
    swap.schedule(200, 1000, seed=0)
    directions = [swap.loss_terms(s)[0][0] for s in range(200)]
    assert 60 < sum(directions) < 140, "about half the steps edit after -> before with -Delta"
    both = Lora.initialize(editor, editor.encode_text([""]), "", LoraSettings(lora_reverse="both"))
    assert both.loss_terms(0) == [(False, 1.0), (True, 1.0)]
    off = Lora.initialize(editor, editor.encode_text([""]), "", LoraSettings(lora_reverse="off"))
    assert off.loss_terms(0) == [(False, 1.0)]


def test_mixing_adapters_is_exact(editor):
    a, b = randomized(editor, 1), randomized(editor, 2)
    mixed = Lora.mix([a, b], [0.25, 0.75])
    assert mixed.rank == 8
    key = next(k for k in a.keys if ".lora_A." in k)
    bkey = key.replace("lora_A", "lora_B")
    delta = lambda m: m.scale * m.alpha / m.rank * m.weight(bkey).detach() @ m.weight(key).detach()  # noqa: E731
    expected = 0.25 * delta(a) + 0.75 * delta(b)
    # Rank concatenation sums the same products in another order (see float_noise).
    torch.testing.assert_close(delta(mixed), expected, rtol=0, atol=float_noise(expected))
    only_a = mixed_method([as_instruction(a, editor), as_instruction(b, editor)], editor, [1.0, 0.0])
    reference = unet_out(editor, a)
    torch.testing.assert_close(unet_out(editor, only_a), reference, rtol=0, atol=float_noise(reference))


def test_bad_adapters_are_refused(editor):
    lora = randomized(editor)
    meta = Metadata(extra={"rank": 4, "alpha": 4.0, "targets": list(lora.targets)})
    tensors = lora.tensors()
    key = next(k for k in tensors if k.endswith("lora_A.weight"))
    with pytest.raises(InstructionFileError, match="has shape"):
        Lora.from_tensors({**tensors, key: torch.zeros(3, 7)}, meta, editor)
    with pytest.raises(InstructionFileError, match="names no linear layer"):
        Lora.from_tensors({**tensors, "unet.nowhere.lora_A.weight": torch.zeros(4, 4)}, meta, editor)
    with pytest.raises(InstructionFileError, match="rank, alpha"):
        Lora.from_tensors(tensors, Metadata(extra={}), editor)
    with pytest.raises(InvertError, match="no module"):
        Lora.initialize(editor, editor.encode_text([""]), "", LoraSettings(lora_targets=("no_such_layer",)))


@pytest.mark.parametrize("key, value, words", [
    ("rank", 1e400, "the adapter's rank: expected a whole number, not inf"),  # before: OverflowError's traceback
    ("rank", "4", "the adapter's rank: expected a whole number"),
    ("alpha", float("nan"), "the adapter's alpha: must be a finite number"),  # before: sampling gave NaN
    ("targets", "to_q", "the adapter's targets: expected a JSON list"),  # before: targets t, o, _, q
    ("targets", [], "the adapter's targets: expected a list of module names"),
])
def test_an_adapters_edited_metadata_is_refused_naming_the_file(editor, run, tmp_path, key, value, words):
    """An .inst whose adapter metadata was edited (its tensors, so its checksum, intact): apply and export-lora
    refuse it in one line naming the file, instead of a traceback or an adapter on the targets' letters."""
    lora = randomized(editor)
    path = tmp_path / "edited.inst"
    as_instruction(lora, editor, extra={**lora.extra_meta(), key: value}).save(path)
    with pytest.raises(InstructionFileError) as caught:
        invert.apply(path, scene(0), editor=editor, steps=1)
    assert str(caught.value).startswith(f"{path}: metadata 'extra': {words}"), caught.value
    r = run("export-lora", path, "-o", tmp_path / "adapter.safetensors")
    assert r.exit_code == 1 and f"Error: {path}: metadata 'extra': {words}" in r.output, r.output
    assert not (tmp_path / "adapter.safetensors").exists()


def test_exported_adapter_gives_the_same_image_in_a_plain_diffusers_pipeline(tiny_model_dir, editor, tmp_path,
                                                                             run):
    from diffusers import StableDiffusionInstructPix2PixPipeline

    lora = randomized(editor)
    inst = as_instruction(lora, editor, noise_seed=3, guidance={"text": 5.0, "image": 1.5})
    inst.save(tmp_path / "lora.inst")
    image = scene(7)
    ours = invert.apply(inst, image, editor=editor, steps=4)
    path = tmp_path / "adapter.safetensors"
    r = run("export-lora", tmp_path / "lora.inst", "-o", path)
    assert r.exit_code == 0, r.output
    r = run("export-lora", tmp_path / "lora.inst", "-o", path)
    assert r.exit_code == 1 and "already exists" in r.output
    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(tiny_model_dir, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    call = dict(prompt="", image=image, num_inference_steps=4, guidance_scale=5.0, image_guidance_scale=1.5)
    plain = pipe(**call, generator=torch.Generator().manual_seed(3)).images[0]
    pipe.load_lora_weights(str(path))
    theirs = pipe(**call, generator=torch.Generator().manual_seed(3)).images[0]
    diff = lambda x, y: (torch.tensor(list(x.tobytes())).float() - torch.tensor(list(y.tobytes())).float()).abs().max()  # noqa: E731
    assert diff(ours, theirs) <= 1, "the exported adapter must edit as invert's own apply does"
    assert diff(plain, theirs) > 8, "and the adapter must matter"
    pipe.unload_lora_weights()
    visii = Instruction("visii", {"visii.init": torch.zeros(1, 77, 32), "visii.learned": torch.zeros(1, 2, 32)}, {})
    visii.save(tmp_path / "visii.inst")
    r = run("export-lora", tmp_path / "visii.inst", "-o", tmp_path / "x.safetensors")
    assert r.exit_code == 1 and "no 'lora' export" in r.output and not (tmp_path / "x.safetensors").exists()


def test_a_pipeline_that_already_holds_adapters_is_refused(editor):
    from peft import LoraConfig

    editor.unet.add_adapter(LoraConfig(r=2, target_modules=["to_q"]), "theirs")
    try:
        with pytest.raises(InvertError, match="already holds LoRA adapters"):
            with randomized(editor).installed():
                pass
    finally:
        editor.unet.unload_lora()


def test_cli_fit_export_and_reverse(run, tiny_model_dir, pairs_dir, tmp_path):
    inst = tmp_path / "night.inst"
    r = run("fit", pairs_dir, "-o", inst, "--model", tiny_model_dir, "--method", "lora", "--steps", 3,
            "--lora-rank", 2, "--lora-targets", "to_k,to_v", "--init", "auto", "--quiet")
    assert r.exit_code == 0, r.output
    loaded = Instruction.load(inst)
    assert loaded.meta.extra["rank"] == 2 and loaded.meta.extra["targets"] == ["to_k", "to_v"]
    assert all(k.endswith(("to_k.lora_A.weight", "to_k.lora_B.weight", "to_v.lora_A.weight", "to_v.lora_B.weight"))
               for k in loaded.tensors if k.startswith("unet."))
    r = run("export-lora", inst, "-o", tmp_path / "a.safetensors")
    assert r.exit_code == 0 and "load_lora_weights" in r.output, r.output
    scene(5).save(tmp_path / "in.png")
    for flag in ((), ("--reverse",)):
        r = run("apply", inst, tmp_path / "in.png", "-o", tmp_path / f"out{len(flag)}.png", "--steps", 2, *flag)
        assert r.exit_code == 0, r.output
    r = run("fit", pairs_dir, "-o", tmp_path / "x.inst", "--model", tiny_model_dir, "--parts", 3, "--quiet")
    assert r.exit_code == 1 and "--brush-parts is an option of --method brush, not of visii" in r.output


def test_conditioning_marks_every_row_of_an_adapter_fit(editor):
    lora = randomized(editor)
    rows = Rows(torch.tensor([True, False]), torch.tensor([5, 5]))
    embeds = lora.conditioning(rows, editor.uncond).embeds
    assert torch.equal(embeds[1], editor.uncond.embeds[0]) and lora.conditions_all_rows
