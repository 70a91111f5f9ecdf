"""--method lora on the tiny model: peft's adapter comes and goes, -Delta of a zero adapter is the identity, the
fit is reproducible, mixing is exact, and an exported adapter gives the same image in a plain diffusers pipeline."""
import pytest
import torch

import invert
from invert.errors import InstructionFileError, InvertError
from invert.fitting import Fitter, FitOptions, fit_images
from invert.instruction import Instruction, mix
from invert.methods.lora import Lora

from conftest import float_noise, scene


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
        with method.sampling_context(editor), method.direction(reverse):
            return editor.unet(x, t, encoder_hidden_states=embeds).sample


def randomized(editor, seed=1):
    """A Lora whose B is non-zero, so that it changes the UNet."""
    lora = Lora.initialize(editor, editor.encode_text([""]), seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, w in lora.weights.items():
            if key.endswith("lora_B.weight"):
                w.copy_(torch.randn(w.shape, generator=gen) * 0.3)
    return lora


def test_zero_adapter_and_its_negation_are_the_identity_and_the_unet_is_restored(editor):
    names = [n for n, _ in editor.unet.named_parameters()]
    base = unet_out(editor)
    lora = Lora.initialize(editor, editor.encode_text([""]))
    assert lora.weights and all(not w.any() for k, w in lora.weights.items() if k.endswith("lora_B.weight"))
    assert torch.equal(unet_out(editor, lora), base)
    assert torch.equal(unet_out(editor, lora, reverse=True), base)
    changed = randomized(editor)
    plus, minus = unet_out(editor, changed), unet_out(editor, changed, reverse=True)
    assert not torch.allclose(plus, base, atol=1e-4) and not torch.allclose(minus, plus, atol=1e-4)
    assert [n for n, _ in editor.unet.named_parameters()] == names, "the adapter must be removed afterwards"
    assert torch.equal(unet_out(editor), base)
    assert not getattr(editor.unet, "peft_config", None)


def test_fit_learns_only_the_adapter_reproducibly(editor, clip):
    befores, afters = night_pairs()
    fingerprint = editor.fingerprint
    options = FitOptions(steps=20, lr=1e-2, resolution=32, clip_weight=0.0)
    fitter = Fitter(editor, befores, afters, options)
    lora = Lora.initialize(editor, editor.encode_text([""]), reverse="off")

    def mean_loss():
        with torch.no_grad(), lora.sampling_context(editor):
            return sum(fitter.loss(lora, s)[0].item() for s in range(20)) / 20

    start = mean_loss()
    fitter.run(lora, quiet=True)
    assert mean_loss() < start * 0.98
    assert any(w.any() for k, w in lora.weights.items() if k.endswith("lora_B.weight"))
    assert editor.fingerprint == fingerprint and not getattr(editor.unet, "peft_config", None)
    a = fit_images(editor, befores, afters, "lora", FitOptions(steps=4, lr=1e-2, resolution=32), clip=clip, quiet=True)
    b = fit_images(editor, befores, afters, "lora", FitOptions(steps=4, lr=1e-2, resolution=32), clip=clip, quiet=True)
    assert a.meta["init_text"] == "" and a.meta["extra"]["rank"] == 4
    assert all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)
    assert any(k.startswith("unet.") and k.endswith("attn2.to_k.lora_A.weight") for k in a.tensors)


def test_lora_reverse_swaps_the_pair_order_at_random_and_both_adds_a_term(editor):
    swap = Lora.initialize(editor, editor.encode_text([""]))
    swap.schedule(200, 1000, seed=0)
    directions = [swap.loss_terms(s)[0][0] for s in range(200)]
    assert 60 < sum(directions) < 140, "about half the steps edit after -> before with -Delta"
    assert Lora.initialize(editor, editor.encode_text([""]), reverse="both").loss_terms(0) == [(False, 1.0), (True, 1.0)]
    assert Lora.initialize(editor, editor.encode_text([""]), reverse="off").loss_terms(0) == [(False, 1.0)]


def test_mixing_adapters_is_exact(editor):
    a, b = randomized(editor, 1), randomized(editor, 2)
    meta = {"extra": {"rank": 4, "alpha": 4.0, "targets": list(a.targets), "reverse": "swap"}}
    ia = Instruction("lora", a.tensors(), dict(meta, model_fingerprint="x"))
    ib = Instruction("lora", b.tensors(), dict(meta, model_fingerprint="x"))
    mixed = mix([ia, ib], [0.25, 0.75])
    assert mixed.meta["extra"]["rank"] == 8
    key = next(k for k in a.weights if k.endswith("lora_A.weight"))
    bkey = key.replace("lora_A", "lora_B")
    delta = lambda t, s: s * t[bkey].float() @ t[key].float()  # noqa: E731
    expected = 0.25 * delta(ia.tensors, 1.0) + 0.75 * delta(ib.tensors, 1.0)
    # Rank concatenation sums the same products in another order (see float_noise).
    torch.testing.assert_close(delta(mixed.tensors, 8 / 8), expected, rtol=0, atol=float_noise(expected))
    only_a = Lora.from_tensors(mix([ia, ib], [1.0, 0.0]).tensors, mix([ia, ib], [1.0, 0.0]).meta, editor)
    reference = unet_out(editor, a)
    torch.testing.assert_close(unet_out(editor, only_a), reference, rtol=0, atol=float_noise(reference))


def test_bad_adapters_are_refused(editor):
    lora = randomized(editor)
    meta = {"extra": {"rank": 4, "alpha": 4.0, "targets": list(lora.targets)}}
    tensors = lora.tensors()
    key = next(k for k in tensors if k.endswith("lora_A.weight"))
    with pytest.raises(InstructionFileError, match="has shape"):
        Lora.from_tensors({**tensors, key: torch.zeros(3, 7)}, meta, editor)
    with pytest.raises(InstructionFileError, match="names no linear layer"):
        Lora.from_tensors({**tensors, "unet.nowhere.lora_A.weight": torch.zeros(4, 4)}, meta, editor)
    with pytest.raises(InstructionFileError, match="rank, alpha"):
        Lora.from_tensors(tensors, {"extra": {}}, editor)
    with pytest.raises(InvertError, match="no module"):
        Lora.initialize(editor, editor.encode_text([""]), targets=("no_such_layer",))


def test_exported_adapter_gives_the_same_image_in_a_plain_diffusers_pipeline(tiny_model_dir, editor, tmp_path):
    from diffusers import StableDiffusionInstructPix2PixPipeline

    from invert.lora_export import export_lora

    lora = randomized(editor)
    inst = Instruction("lora", lora.tensors(), {
        "extra": lora.extra_meta(), "init_text": "", "noise_seed": "3", "guidance": {"text": 5.0, "image": 1.5},
        "model_fingerprint": editor.fingerprint})
    image = scene(7)
    ours = invert.apply(inst, [image], editor=editor, steps=4)[0]
    path = export_lora(inst, tmp_path / "adapter.safetensors")
    with pytest.raises(InvertError, match="already exists"):
        export_lora(inst, path)
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
    with pytest.raises(InvertError, match="holds no LoRA"):
        export_lora(Instruction("visii", {}, {}), tmp_path / "x.safetensors")


def test_a_pipeline_that_already_holds_adapters_is_refused(editor):
    from peft import LoraConfig

    editor.unet.add_adapter(LoraConfig(r=2, target_modules=["to_q"]), "theirs")
    try:
        with pytest.raises(InvertError, match="already holds LoRA adapters"):
            with randomized(editor).sampling_context(editor):
                pass
    finally:
        editor.unet.unload_lora()


def test_cli_fit_export_and_reverse(run, tiny_model_dir, pairs_dir, tmp_path):
    inst = tmp_path / "night.inst"
    r = run("fit", pairs_dir, "-o", inst, "--model", tiny_model_dir, "--method", "lora", "--steps", 3,
            "--lora-rank", 2, "--lora-targets", "to_k,to_v", "--quiet")
    assert r.exit_code == 0, r.output
    loaded = Instruction.load(inst)
    assert loaded.meta["extra"]["rank"] == 2 and loaded.meta["extra"]["targets"] == ["to_k", "to_v"]
    assert all(k.endswith(("to_k.lora_A.weight", "to_k.lora_B.weight", "to_v.lora_A.weight", "to_v.lora_B.weight"))
               for k in loaded.tensors if k.startswith("unet."))
    r = run("export-lora", inst, "-o", tmp_path / "a.safetensors")
    assert r.exit_code == 0 and "load_lora_weights" in r.output, r.output
    scene(5).save(tmp_path / "in.png")
    for flag in ((), ("--reverse",)):
        r = run("apply", inst, tmp_path / "in.png", "-o", tmp_path / f"out{len(flag)}.png", "--steps", 2, *flag)
        assert r.exit_code == 0, r.output
