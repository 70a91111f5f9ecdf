"""The edit encoder (issue 30): trained end to end through the tiny model with the fit's own loss, saved and checked
as .inst files are, an ordinary instruction from any number of pairs in any order, and a fit's start."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import TINY_RES, messages, scene

from invert.encoder import EncoderFile, encode_images, encoded_method
from invert.encoder.data import PairSets
from invert.encoder.training import EncoderTrainer
from invert.errors import EncoderFileError, InvertError
from invert.instruction import Instruction
from invert.methods import settings_for
from invert.settings.encoder import ENCODER_FIT_DEFAULTS, EncoderSettings
from invert.toy import world

# Few steps at a high learning rate: the tiny model is random, the encoder only has to move its loss.
QUICK = {"steps": 10, "edits_per_step": 2, "loss_pairs": 2, "timesteps": 4, "max_pairs": 3, "basis": 4,
         "hidden": 32, "val_every": 0, "save_every": 0, "lr": 1e-2, "basis_lr": 1.0}


def _inverted(image):
    from PIL import Image

    return Image.fromarray(255 - np.asarray(image))


def write_sets(root):
    """Two edits of four pairs each, fit-batch's layout: night (darker, bluer) and inverted colours."""
    for name, edit in (("night", lambda i: scene(i, night=True)), ("invert", lambda i: _inverted(scene(i)))):
        for side in ("before", "after"):
            (root / name / side).mkdir(parents=True)
        for i in range(4):
            scene(10 * i).save(root / name / "before" / f"{i}.png")
            edit(10 * i).save(root / name / "after" / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    return write_sets(tmp_path_factory.mktemp("encoder-sets"))


def make_trainer(editor, clip, sets, method="visii", **options):
    fit_settings, method_settings = settings_for(method, {"resolution": TINY_RES, "lr": 1e-2, **ENCODER_FIT_DEFAULTS})
    return EncoderTrainer(editor, clip, method, fit_settings, method_settings,
                          EncoderSettings(**{**QUICK, **options}), PairSets(sets))


@pytest.fixture(scope="module")
def trained(editor, clip, sets, tmp_path_factory):
    """A visii encoder trained a few steps, saved; with its validation loss before and after."""
    trainer = make_trainer(editor, clip, sets)
    trainer.set_input_statistics()
    before = trainer.validation_loss()
    result = trainer.run(quiet=True)
    after = trainer.validation_loss()
    path = result.save(tmp_path_factory.mktemp("encoder") / "visii.safetensors")
    return path, before, after


def test_training_lowers_the_loss_on_held_out_pairs(trained):
    """The validation loss is taken on fixed episodes: pairs the encoder did not encode, fixed timesteps and noise."""
    _, before, after = trained
    assert after < 0.95 * before, (before, after)


def test_the_gradient_reaches_the_encoder_exactly(editor, clip, sets):
    """The two-halves backward (the method's parameter gradients passed back through the encoder) equals the
    gradient of the loss as one function of the encoder's weights, taken by finite differences."""
    trainer = make_trainer(editor, clip, sets, basis=2, hidden=8)
    trainer.set_input_statistics()
    with torch.no_grad():
        for p in trainer.encoder.basis_parameters():
            p.normal_(0, 0.05)
    episode = trainer.episode(0, 0)
    weight = trainer.encoder.head[-1].weight
    with trainer.method.installed():
        trainer.encoder.zero_grad()
        trainer.episode_loss(episode, 0, (0, 0, 0, 0), 1.0)
        analytic = weight.grad[0, 0].item()
        eps = 1e-3
        losses = []
        for sign in (1, -1):
            with torch.no_grad():
                weight[0, 0] += sign * eps
            losses.append(trainer.episode_loss(episode, 0, (0, 0, 0, 0), 1.0, backward=False))
            with torch.no_grad():
                weight[0, 0] -= sign * eps
    numeric = (losses[0] - losses[1]) / (2 * eps)
    assert analytic == pytest.approx(numeric, rel=0.05, abs=1e-4)


def test_save_and_load_round_trip(trained, editor, clip):
    path, _, _ = trained
    loaded = EncoderFile.load(path)
    again = EncoderFile.load(loaded.save(path.with_name("copy.safetensors")))
    assert loaded.info == again.info and loaded.method == "visii"
    for (name, a), (_, b) in zip(loaded.encoder.state_dict().items(), again.encoder.state_dict().items()):
        assert torch.equal(a, b), name
    assert loaded.info["training"]["steps"] == QUICK["steps"]
    assert loaded.info["model_fingerprint"] == editor.fingerprint


def test_encoding_is_order_free_and_takes_any_number_of_pairs(trained, editor, clip):
    encoder = EncoderFile.load(trained[0])
    befores, afters = [scene(i) for i in range(3)], [scene(i, night=True) for i in range(3)]
    first = encoded_method(encoder, editor, clip, befores, afters).learned.detach()
    permuted = encoded_method(encoder, editor, clip, befores[::-1], afters[::-1]).learned.detach()
    torch.testing.assert_close(first, permuted)
    one = encoded_method(encoder, editor, clip, befores[:1], afters[:1]).learned.detach()
    assert one.shape == first.shape and not torch.equal(one, first)
    assert not torch.equal(first, encoder.encoder.base["learned"]), "the trained encoder changes the state"


def test_invert_encode_writes_an_instruction_that_applies(trained, tiny_model_dir, pairs_dir, tmp_path, run):
    out = tmp_path / "night.inst"
    r = run("encode", pairs_dir, "-o", out, "--encoder", trained[0], "--model", tiny_model_dir, "--device", "cpu")
    assert r.exit_code == 0, r.output
    inst = Instruction.load(out)
    assert inst.method == "visii" and inst.meta.steps == 0 and "edit encoder visii.safetensors" in \
        inst.meta.encoded_by
    assert "clip.direction" in inst.tensors and len(inst.meta.exemplars) == 3
    r = run("apply", out, pairs_dir / "before", "-o", tmp_path / "edited", "--steps", "2")
    assert r.exit_code == 0, r.output
    assert len(list((tmp_path / "edited").glob("*.png"))) == 3
    r = run("encode", pairs_dir, "-o", out, "--encoder", trained[0], "--model", tiny_model_dir)
    assert r.exit_code == 1 and "already exists" in r.output


def test_a_fit_starts_from_the_encoders_instruction(trained, editor, clip, pairs_dir):
    from conftest import tiny_fit
    from invert.pairs import find_pairs, load_pairs

    encoder = EncoderFile.load(trained[0])
    befores, afters = load_pairs(find_pairs(pairs_dir), TINY_RES)
    start = encode_images(encoder, editor, clip, befores, afters)
    zero = tiny_fit(editor, befores, afters, clip=clip, steps=0, init="encoder", encoder_file=str(trained[0]))
    assert torch.equal(zero.tensors["visii.learned"], start.tensors["visii.learned"])
    assert zero.meta.init_text == encoder.info["init_text"]
    fitted = tiny_fit(editor, befores, afters, clip=clip, steps=2, lr=1e-2, keep="last",
                      init="encoder", encoder_file=str(trained[0]))
    assert not torch.equal(fitted.tensors["visii.learned"], start.tensors["visii.learned"])
    with pytest.raises(EncoderFileError, match="encodes visii instructions; this fit is --method brush"):
        tiny_fit(editor, befores, afters, "brush", clip=clip, steps=0, init="encoder", encoder_file=str(trained[0]))
    with pytest.raises(InvertError, match="give one"):
        tiny_fit(editor, befores, afters, clip=clip, steps=0, init="encoder", encoder_file=str(trained[0]),
                 init_text="x")
    # the fit's own method options decide the state's shape: a state of another shape is said to be theirs, not
    # the model's (the model was checked first)
    with pytest.raises(EncoderFileError, match=r"does not fit this fit's options \(trained with --tokens None, here "
                                               r"5; the encoder's parameters"):
        tiny_fit(editor, befores, afters, clip=clip, steps=0, init="encoder", encoder_file=str(trained[0]), tokens=5)


def test_bad_encoder_files_are_one_line_errors(trained, tiny_model_dir, pairs_dir, tmp_path, run):
    path = trained[0]
    tensors = load_file(str(path))
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    from invert.instruction import tensors_sha256

    def variant(name, tensors=tensors, **info):
        changed = {**json.loads(meta["info"]), **info}
        out = tmp_path / name
        save_file(tensors, str(out), metadata={**meta, "info": json.dumps(changed),
                                                "tensor_sha256": tensors_sha256(tensors)})
        return out

    options = json.loads(meta["info"])["options"]
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[:100])
    image = tmp_path / "image.safetensors"
    scene(0).save(image, format="PNG")
    tampered = tmp_path / "tampered.safetensors"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    tampered.write_bytes(bytes(data))
    shapes = dict(tensors)
    shapes["head.2.bias"] = torch.zeros(7)
    cases = {
        truncated: "truncated",
        image: "not an edit encoder file",
        tampered: "checksum mismatch",
        variant("method.safetensors", method="dreambooth"): "unknown method 'dreambooth'",
        variant("shape.safetensors", tensors=shapes): "tensor 'head.2.bias' has shape (7,)",
        variant("model.safetensors", model_fingerprint="0123456789abcdef"): "not on the loaded one",
        variant("clip.safetensors", clip_fingerprint="0123456789abcdef"): "reads the CLIP model",
        # the options it trained with are checked as an .inst file's are (a resolution sizes the pairs' images)
        variant("size.safetensors", options={**options, "resolution": "abc"}):
            "metadata 'options': option 'resolution': expected a whole number, not 'abc'",
        variant("loss.safetensors", options={**options, "loss_target": "mse"}):
            "metadata 'options': option 'loss_target': choose from cfg, cond; not 'mse'",
        variant("unknown.safetensors", options={**options, "stepz": 3}): "metadata 'options': unknown option 'stepz'",
        # sizes in the metadata are checked against the tensors before anything of theirs is built
        variant("wide.safetensors", hidden=10**6): "its metadata makes it (1000000, ",
        tmp_path / "missing.safetensors": "no such file",
        tmp_path: "a folder, not an edit encoder file",
    }
    for bad, expected in cases.items():
        r = run("encode", pairs_dir, "-o", tmp_path / "out.inst", "--encoder", bad, "--model", tiny_model_dir)
        lines = messages(r.output)
        assert r.exit_code == 1 and len(lines) == 1 and str(bad) in lines[0] and expected in lines[0], (bad, r.output)
    assert not (tmp_path / "out.inst").exists()
    # fit has no --allow-model-mismatch: the way round it that the error gives is encode's
    r = run("fit", pairs_dir, "-o", tmp_path / "out.inst", "--init", "encoder", "--encoder-file",
            tmp_path / "model.safetensors", "--model", tiny_model_dir, "--steps", 0)
    lines = messages(r.output)
    assert r.exit_code == 1 and len(lines) == 1 and "'invert encode --allow-model-mismatch' uses it" in lines[0], \
        r.output


def test_resume_continues_to_the_same_encoder(editor, clip, sets, tmp_path):
    from invert.fitting.checkpoint import FitStopped

    whole = make_trainer(editor, clip, sets, steps=3).run(quiet=True)
    stopping = make_trainer(editor, clip, sets, steps=3)
    done = []
    with pytest.raises(FitStopped) as stopped:
        stopping.run(quiet=True, progress=lambda p: done.append(p.step), should_stop=lambda: len(done) >= 2)
    state = stopped.value.state.save(tmp_path / "enc.ckpt")
    from invert.fitting.checkpoint import FitState

    resumed = make_trainer(editor, clip, sets, steps=3).run(quiet=True, resume=FitState.load(state))
    for (name, a), (_, b) in zip(whole.encoder.state_dict().items(), resumed.encoder.state_dict().items()):
        torch.testing.assert_close(a, b, msg=name)
    with pytest.raises(InvertError, match="saved by a different fit"):
        make_trainer(editor, clip, sets, steps=3, basis=5).run(quiet=True, resume=FitState.load(state))


def test_every_method_trains_through_its_parameters(editor, clip, sets):
    """brush's K/V routes and a LoRA's peft layers read the method's Parameter objects: the encoder's state reaches
    them, and the loss's gradient comes back to the basis."""
    for method, options in (("brush", {"brush_parts": 2}), ("lora", {})):
        fit_settings, method_settings = settings_for(method, {"resolution": TINY_RES, **ENCODER_FIT_DEFAULTS,
                                                              **options})
        trainer = EncoderTrainer(editor, clip, method, fit_settings, method_settings,
                                 EncoderSettings(**{**QUICK, "steps": 1}), PairSets(sets))
        result = trainer.run(quiet=True)
        moved = [n for n, p in result.encoder.basis.items() if p.abs().sum() > 0]
        assert moved, method
        assert set(result.info["parameters"]) == {n for n, _ in trainer.method.named_parameters()}


def test_phrase_states_start_at_their_instructions(editor, clip, tmp_path):
    """--basis-vocab: one basis state per phrase, at 'make it PHRASE' widened to the base's positions, keyed by the
    phrase's CLIP text feature; a softmax encoder whose key matches the pairs' direction gives that instruction."""
    from invert.encoder.training import phrase_states
    from invert.methods.visii import Visii

    phrases = tmp_path / "phrases.txt"
    phrases.write_text("night\nsepia\n")
    fit_settings, method_settings = settings_for("visii", {"tokens": 12})
    base = Visii.initialize(editor, editor.encode_text([""]), "", method_settings)
    states, keys = phrase_states(editor, clip, base, method_settings,
                                 EncoderSettings(basis_vocab=(str(phrases),)))
    night = Visii.initialize(editor, editor.encode_text(["make it night"]), "make it night").widen(12)
    torch.testing.assert_close(states["learned"][0], (night.learned - base.learned).detach())
    torch.testing.assert_close(keys, clip.text_features(["night", "sepia"]))
    from invert.encoder import EditEncoder

    encoder = EditEncoder({"learned": base.learned.detach()}, keys.shape[1], 8, 2, "softmax", states, keys)
    with torch.no_grad():
        encoder.log_temperature.fill_(-10.0)  # a near one-hot choice of the best-matching key
        state = encoder(torch.zeros(1, keys.shape[1]), keys[:1])  # pairs whose direction is night's feature
    torch.testing.assert_close(state["learned"], night.learned.detach())


def test_a_basis_vocab_that_gives_no_state_is_said(editor, clip, tmp_path):
    """--basis-vocab whose phrases all give no state (longer than the base's positions, or a method whose state does
    not depend on its text) would leave the encoder with its --basis states only, without a word."""
    from invert.encoder.training import phrase_states
    from invert.errors import InvertWarning
    from invert.methods import method_class

    phrases = tmp_path / "phrases.txt"
    phrases.write_text("night\n" + " ".join(["sepia"] * 30) + "\n")
    for method, options, words in (("lora", {}, "2 change nothing (a lora state does not depend on its text)"),
                                   ("visii", {"tokens": 2}, "2 have more tokens than the base's 2 positions")):
        fit_settings, method_settings = settings_for(method, options)
        base = method_class(method).initialize(editor, editor.encode_text([""]), "", method_settings)
        with pytest.warns(InvertWarning, match=rf"--basis-vocab {phrases}: none of its 2 phrases gives a basis "
                                               rf"state \({words.replace('(', '.').replace(')', '.')}"):
            assert phrase_states(editor, clip, base, method_settings,
                                 EncoderSettings(basis_vocab=(str(phrases),))) == (None, None)


def test_toy_world_random_edits_hold_the_hard_edits_out():
    rng = np.random.default_rng(0)
    edits = [world.random_edit(rng) for _ in range(300)]
    hard = [set(world.components(e)) for e in world.HARD_EDITS.values() if len(world.components(e)) > 1]
    assert not any(h <= {p.split("@")[0] for p in world.components(e)} for e in edits for h in hard)
    strengths = [float(p.split("@")[1]) for e in edits for p in world.components(e) if "@" in p]
    assert strengths and not any(0.4 < s < 0.6 for s in strengths)
    assert {len(world.components(e)) for e in edits} == {1, 2, 3}
    # a local edit second in a composition is sampled where it applies after the first
    composed = world._then(world.EDITS["frame"], world.EDITS["add_star"], "frame+add_star")
    before, after = world.apply_edit(composed, world.scene_for(composed, np.random.default_rng(0)))
    assert not np.array_equal(np.asarray(before), np.asarray(after))


@pytest.mark.processes
def test_torchrun_with_two_cpu_processes_averages_the_gradients(tiny_model_dir, tmp_path):
    """Two gloo processes draw their own edits and average their gradients: both end with the same encoder, which
    process 0 writes."""
    sets = write_sets(tmp_path / "sets")
    out = tmp_path / "enc.safetensors"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "invert.cli", "encoder", "train", "-o", str(out), "--data", str(sets), "--model", str(tiny_model_dir),
           "--device", "cpu", "--resolution", "32", "--steps", "2", "--basis", "4", "--hidden", "16", "--quiet"]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(var, None)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert EncoderFile.load(out).info["training"]["processes"] == 2


def test_the_web_apps_model_uses_the_encoder_its_folder_ships(trained, tiny_model_dir, pairs_dir, tmp_path):
    """The Learn tab shows the encoder's edit before a fit when the model folder ships an encoder (ui/backend.py)."""
    from invert.encoder import shipped_encoders
    from ui.backend import Model

    folder = tmp_path / "model"
    folder.mkdir()
    for item in tiny_model_dir.iterdir():
        (folder / item.name).symlink_to(item)
    assert shipped_encoders(str(folder)) == {}
    (folder / "encoder").mkdir()
    (folder / "encoder" / "visii.safetensors").write_bytes(trained[0].read_bytes())
    model = Model(str(folder), device="cpu")
    assert model.encoder is not None and model.encoder.method == "visii"
    from invert.pairs import find_pairs

    inst = model.encode(find_pairs(pairs_dir))
    assert inst.method == "visii" and inst.meta.steps == 0


def test_invert_encoder_train_checkpoints_and_resumes(tiny_model_dir, sets, tmp_path, run):
    """The CLI writes the encoder and a resumable state every --save-every steps; --resume finishes the run to the
    encoder the uninterrupted run writes."""
    args = ("--data", sets, "--model", tiny_model_dir, "--device", "cpu", "--resolution", 32, "--steps", 3,
            "--save-every", 2, "--basis", 2, "--hidden", 8, "--max-pairs", 2, "--val-every", 0, "--quiet")
    whole = tmp_path / "whole.safetensors"
    r = run("encoder", "train", "-o", whole, *args)
    assert r.exit_code == 0, r.output
    assert EncoderFile.load(whole).info["training"]["steps"] == 3
    ckpt = whole.with_name("whole.safetensors.ckpt")
    assert ckpt.is_file()  # written at step 2 of 3
    resumed = tmp_path / "resumed.safetensors"
    r = run("encoder", "train", "-o", resumed, *args, "--resume", ckpt)
    assert r.exit_code == 0, r.output
    a, b = EncoderFile.load(whole), EncoderFile.load(resumed)
    assert b.info["training"]["steps"] == 3
    for (name, x), (_, y) in zip(a.encoder.state_dict().items(), b.encoder.state_dict().items()):
        torch.testing.assert_close(x, y, msg=name)


def test_invert_encoder_train_resume_overwrites_only_its_own_output(tiny_model_dir, sets, tmp_path, run):
    """--resume may overwrite the OUTPUT that the stopped run wrote at --save-every (its state is OUTPUT.ckpt); any
    other existing file needs --force, and is refused before any model loads, as without --resume."""
    args = ("--data", sets, "--model", tiny_model_dir, "--device", "cpu", "--resolution", 32, "--steps", 3,
            "--save-every", 2, "--basis", 2, "--hidden", 8, "--max-pairs", 2, "--val-every", 0, "--quiet")
    own = tmp_path / "own.safetensors"
    assert run("encoder", "train", "-o", own, *args).exit_code == 0
    ckpt = own.with_name("own.safetensors.ckpt")
    other = tmp_path / "other.safetensors"
    other.write_bytes(b"someone's encoder")
    r = run("encoder", "train", "-o", other, *args, "--resume", ckpt)
    lines = messages(r.output)
    assert r.exit_code == 1 and len(lines) == 1 and "already exists (use --force" in lines[0], r.output
    assert "loading" not in r.output and other.read_bytes() == b"someone's encoder"
    r = run("encoder", "train", "-o", tmp_path / "new" / "enc.safetensors", *args, "--resume", ckpt)
    assert r.exit_code == 0, r.output  # a folder to create, as without --resume
    r = run("encoder", "train", "-o", own, *args, "--resume", ckpt)
    assert r.exit_code == 0, r.output


def test_invert_encoder_train_resume_of_another_training_names_the_file_and_what_differs(tiny_model_dir, sets,
                                                                                          tmp_path, run):
    args = ("--data", sets, "--model", tiny_model_dir, "--device", "cpu", "--resolution", 32, "--steps", 3,
            "--save-every", 2, "--basis", 2, "--max-pairs", 2, "--val-every", 0, "--quiet")
    out = tmp_path / "enc.safetensors"
    assert run("encoder", "train", "-o", out, *args, "--hidden", 8, "--guidance", 3).exit_code == 0
    ckpt = out.with_name("enc.safetensors.ckpt")
    r = run("encoder", "train", "-o", tmp_path / "other.safetensors", *args, "--hidden", 16, "--guidance", 2,
            "--resume", ckpt)
    lines = messages(r.output)
    assert r.exit_code == 1 and len(lines) == 1, r.output
    assert lines[0].startswith(f"Error: {ckpt}: saved by a different fit"), lines[0]
    # each difference by its name, not the whole of what the two runs record
    assert "--hidden (8 there, 16 here)" in lines[0] and "--guidance (3.0 there, 2.0 here)" in lines[0], lines[0]
    assert len(lines[0]) < 400, lines[0]
    # a fit's state is no encoder training's: said so, not as everything either records
    from invert.fitting.checkpoint import FitState

    fit_state = FitState.load(ckpt)
    fit_state.identity = {"method": "visii", "model": "0123", "init_text": "", "exemplars": [], "options": {}}
    fit_state.save(tmp_path / "fit.inst.ckpt")
    r = run("encoder", "train", "-o", tmp_path / "other.safetensors", *args, "--hidden", 8, "--resume",
            tmp_path / "fit.inst.ckpt")
    lines = messages(r.output)
    assert r.exit_code == 1 and len(lines) == 1, r.output
    assert lines[0] == (f"Error: {tmp_path / 'fit.inst.ckpt'}: saved by another kind of run (it records exemplars, "
                        "init_text, method, model, options; this one data, encoder, settings)"), lines[0]


def test_invert_encoder_train_refuses_a_state_name_too_long_before_training(tiny_model_dir, sets, tmp_path, run):
    """OUTPUT.ckpt, written every --save-every steps and when stopped, is probed before any work (as fit's is): a
    name past the file system's limit is not found out when a stopped training's state would be lost for it."""
    out = tmp_path / ("e" * (255 - len(".safetensors.ckpt") + 1) + ".safetensors")  # OUTPUT fits, OUTPUT.ckpt not
    r = run("encoder", "train", "-o", out, "--data", sets, "--model", tiny_model_dir, "--device", "cpu",
            "--resolution", 32, "--steps", 3, "--save-every", 2, "--basis", 2, "--hidden", 8, "--val-every", 0,
            "--quiet")
    lines = messages(r.output)
    assert r.exit_code == 1 and len(lines) == 1 and f"{out}.ckpt: cannot write (File name too long" in lines[0], \
        r.output
    assert "loading" not in r.output and list(tmp_path.iterdir()) == []


def test_invert_encoder_train_config_errors_name_the_command(tmp_path, run):
    config = tmp_path / "enc.toml"
    config.write_text("stepz = 3\n")
    r = run("encoder", "train", "-o", tmp_path / "enc.safetensors", "--config", config)
    assert r.exit_code == 2 and "the options of 'invert encoder train' are its flags" in r.output, r.output


def test_invert_encoder_train_refuses_bad_input(tiny_model_dir, sets, tmp_path, run):
    """One line naming the folder or flag; a bad folder or value before any model loads."""
    out = tmp_path / "enc.safetensors"
    (tmp_path / "one" / "edit" / "before").mkdir(parents=True)
    (tmp_path / "one" / "edit" / "after").mkdir()
    scene(0).save(tmp_path / "one" / "edit" / "before" / "0.png")
    scene(0, night=True).save(tmp_path / "one" / "edit" / "after" / "0.png")
    shutil.copytree(sets, tmp_path / "linked")  # a set that is a dangling link was left out without a word
    (tmp_path / "linked" / "gone").symlink_to(tmp_path / "nothing", target_is_directory=True)
    for args, expected, early in (
            (("--data", tmp_path / "none"), "not a folder of exemplar sets", True),
            (("--data", tmp_path / "one"), "1 pair; an encoder learns from sets of at least 2", True),
            (("--data", tmp_path / "linked"), f"{tmp_path / 'linked' / 'gone'}: not a folder of exemplar pairs (a link "
             "to nowhere)", True),
            (("--data", sets, "--basis", 0, "--resolution", 32), "no basis states", False),
    ):
        r = run("encoder", "train", "-o", out, "--model", tiny_model_dir, "--device", "cpu", *args)
        lines = messages(r.output)
        assert r.exit_code != 0 and len(lines) == 1 and expected in lines[0], (args, r.output)
        assert not early or "loading" not in r.output, args
    r = run("encoder", "train", "-o", out, "--data", sets, "--lr", 5)
    assert r.exit_code == 2 and "Invalid value for '--lr': must be at most 1, not 5.0" in r.output
    assert not out.exists()


def test_invert_fit_init_encoder_on_the_command_line(trained, tiny_model_dir, pairs_dir, tmp_path, run):
    out = tmp_path / "fit.inst"
    r = run("fit", pairs_dir, "-o", out, "--model", tiny_model_dir, "--device", "cpu", "--steps", 0, "--init",
            "encoder", "--encoder-file", trained[0], "--quiet")
    assert r.exit_code == 0, r.output
    inst = Instruction.load(out)
    assert inst.meta.options["init"] == "encoder" and inst.meta.options["encoder_file"] == str(trained[0])
    # the encoder's loss target (it trained on cond) unless one is given, and recorded as where it came from
    assert inst.meta.options["loss_target"] == ENCODER_FIT_DEFAULTS["loss_target"] == "cond"
    assert inst.meta.model_defaults["loss_target"] == "cond"
    r = run("fit", pairs_dir, "-o", tmp_path / "cfg.inst", "--model", tiny_model_dir, "--device", "cpu", "--steps", 0,
            "--init", "encoder", "--encoder-file", trained[0], "--loss-target", "cfg", "--quiet")
    assert r.exit_code == 0, r.output
    assert Instruction.load(tmp_path / "cfg.inst").meta.options["loss_target"] == "cfg"
    assert "loss_target" not in (Instruction.load(tmp_path / "cfg.inst").meta.model_defaults or {})
    r = run("fit", pairs_dir, "-o", tmp_path / "other.inst", "--model", tiny_model_dir, "--encoder-file", trained[0])
    lines = messages(r.output)
    assert r.exit_code == 1 and len(lines) == 1 and "only with --init encoder" in lines[0], r.output
    r = run("fit", pairs_dir, "-o", tmp_path / "none.inst", "--model", tiny_model_dir, "--init", "encoder")
    lines = messages(r.output)
    assert r.exit_code == 1 and len(lines) == 1 and "ships no visii encoder" in lines[0], r.output


def test_the_toy_model_ships_an_encoder(run, tmp_path):
    """invert encode finds the toy model's own encoder (invert/toy/model/encoder/visii.safetensors, trained on the
    toy world's catalogue edits): its night instruction edits held-out scenes far closer to the true edit than
    leaving them as they are, and a fit starts from it."""
    from invert.metrics import as_tensor, psnr
    from invert.pairs import find_pairs, load_pairs, open_image

    night = Path(__file__).resolve().parent.parent / "examples" / "toy" / "night"
    shipped = Path(__file__).resolve().parent.parent / "invert" / "toy" / "model" / "encoder" / "visii.safetensors"
    assert shipped.stat().st_size < 3 * 2**20
    out = tmp_path / "night.inst"
    r = run("encode", night / "train", "-o", out, "--model", "toy", "--device", "cpu", "--quiet")
    assert r.exit_code == 0, r.output
    r = run("apply", out, night / "test" / "before", "-o", tmp_path / "edited", "--device", "cpu", "--quiet")
    assert r.exit_code == 0, r.output
    befores, afters = load_pairs(find_pairs(night / "test"), 32)
    edited = [open_image(p) for p in sorted((tmp_path / "edited").iterdir())]
    assert len(edited) == len(afters)
    gain = psnr(as_tensor(edited), as_tensor(afters)).mean() - psnr(as_tensor(befores), as_tensor(afters)).mean()
    assert gain > 10, f"{gain:.2f} dB over no edit"
    r = run("fit", night / "train", "-o", tmp_path / "fit.inst", "--model", "toy", "--device", "cpu", "--init",
            "encoder", "--steps", 0, "--quiet")
    assert r.exit_code == 0, r.output
    assert Instruction.load(tmp_path / "fit.inst").meta.options["init"] == "encoder"


def test_a_non_finite_loss_stops_with_the_state_before_it(editor, clip, sets):
    from invert.fitting.checkpoint import FitDiverged

    trainer = make_trainer(editor, clip, sets, steps=3)
    with torch.no_grad():
        trainer.encoder.basis["learned"].fill_(float("nan"))
    with pytest.raises(FitDiverged, match="the encoder's loss became nan at step 1") as diverged:
        trainer.run(quiet=True)
    assert diverged.value.state.step == 0


def test_the_validation_comparison_scores_each_encoder_and_the_parts_of_a_composition(trained, editor, clip):
    """benchmarks.encoder_val: a PSNR per shots setting for every edit, and the parts-sum row only for a composed
    edit (night_frame is night then frame; night is one part)."""
    from benchmarks.encoder_val import compare

    path, _, _ = trained
    result = compare(editor, clip, {"e": EncoderFile.load(path)}, ["night_frame", "night"], (2, 1), parts=True,
                     log=lambda line: None)
    assert set(result["e"]["night_frame"]) == {"2", "1", "parts"} and set(result["e"]["night"]) == {"2", "1"}
    assert all(np.isfinite(v) for cells in result["e"].values() for v in cells.values())


def _loss_on(method, editor, befores, afters, settings):
    """The encoder's loss for ``method``'s state on the pairs, at fixed timesteps and noise."""
    from invert.encoder.loss import state_loss
    from invert.fitting.loop import FitData

    data = FitData(editor, befores, afters, 123)
    t = torch.tensor([50, 300, 600, 900] * len(befores)) % editor.num_train_timesteps
    pair = torch.arange(len(befores)).repeat_interleave(4)
    with method.installed():
        return state_loss(method, data, settings, t, pair, 0, backward=False)


def test_refinement_fits_the_encoders_basis_weights_to_the_pairs(trained, editor, clip, pairs_dir):
    """--encoder-refine: the encoder's weights over its basis states fitted to the pairs lower the encoder's loss on
    them; same seed, same weights."""
    from invert.encoder import refinement
    from invert.encoder.network import load_state
    from invert.encoder.refine import fitted_weights
    from invert.pairs import find_pairs, load_pairs

    encoder = EncoderFile.load(trained[0])
    net = encoder.encoder
    befores, afters = load_pairs(find_pairs(pairs_dir), TINY_RES)
    method = encoded_method(encoder, editor, clip, befores, afters)
    settings = refinement(encoder, 20, lr=0.2)
    before, after = clip.image_features(befores), clip.image_features(afters)
    start = net.weights(before, after).detach()

    def fitted(seed):
        return fitted_weights(net, method, settings_for("visii", encoder.info["options"])[1], editor, clip, start,
                              before, after, befores, afters, dataclasses.replace(settings, seed=seed))

    refined = fitted(0)
    losses = []
    for weights in (start, refined):
        with torch.no_grad():
            load_state(method, net.decode(weights))
        losses.append(_loss_on(method, editor, befores, afters, settings))
    assert losses[1] < 0.99 * losses[0], losses  # the loss on a random tiny model is mostly noise it cannot fit
    assert torch.equal(fitted(0), refined) and not torch.equal(fitted(1), refined)


class _Scores:
    """In place of the fit's Validation: the scores it gives, in order (the encoder's own state, then the refined)."""

    def __init__(self, *scores: float):
        self.scores = list(scores)

    def of_fit(self, *args, **kwargs) -> "_Scores":
        return self

    def score(self, method) -> float:
        return self.scores.pop(0)


def test_refinement_keeps_the_encoders_answer_unless_the_refined_one_edits_the_pairs_better(trained, editor, clip,
                                                                                            pairs_dir, monkeypatch):
    """The refined weights are kept only if they score at least the encoder's own on the pairs (the fit's
    validation sampling, here scores given in order), and the description says which was kept."""
    import invert.encoder.refine as refine_module
    from invert.encoder import refinement
    from invert.encoder.encode import encoded_state
    from invert.pairs import find_pairs, load_pairs

    encoder = EncoderFile.load(trained[0])
    befores, afters = load_pairs(find_pairs(pairs_dir), TINY_RES)
    plain = encoded_method(encoder, editor, clip, befores, afters)
    assert torch.equal(encoded_method(encoder, editor, clip, befores, afters, refine=refinement(encoder, 0)).learned,
                       plain.learned)
    for own, refined, kept in ((10.0, 5.0, False), (5.0, 10.0, True), (7.0, 7.0, True)):
        monkeypatch.setattr(refine_module, "Validation", _Scores(own, refined))
        method, result = encoded_state(encoder, editor, clip, befores, afters, refine=refinement(encoder, 4, lr=0.1))
        assert result.scores == (own, refined) and result.kept_refined == kept
        assert torch.equal(method.learned, plain.learned) != kept
        assert ("not kept" in result.describe(4)) != kept


def test_invert_encode_and_fit_refine_the_encoders_answer(trained, tiny_model_dir, pairs_dir, tmp_path, run):
    """invert encode --encoder-refine N records the steps; a fit's --init encoder --encoder-refine N starts from the
    same state; a refinement without an encoder, or of a negative count, is a one-line error that writes nothing."""
    out = tmp_path / "refined.inst"
    common = ("--encoder-refine", 3, "--encoder-refine-lr", 0.05, "--model", tiny_model_dir, "--device", "cpu")
    r = run("encode", pairs_dir, "-o", out, "--encoder", trained[0], *common)
    assert r.exit_code == 0 and "its basis weights fitted 3 steps" in r.output, r.output
    inst = Instruction.load(out)
    assert inst.meta.steps == 3 and "; its basis weights fitted 3 steps" in inst.meta.encoded_by
    assert inst.meta.options["encoder_refine"] == 3 and inst.meta.options["encoder_refine_lr"] == 0.05
    r = run("fit", pairs_dir, "-o", tmp_path / "fit.inst", "--steps", 0, "--init", "encoder", "--encoder-file",
            trained[0], "--val", 0, "--quiet", *common)
    assert r.exit_code == 0, r.output
    assert torch.equal(Instruction.load(tmp_path / "fit.inst").tensors["visii.learned"], inst.tensors["visii.learned"])
    r = run("fit", pairs_dir, "-o", tmp_path / "fit2.inst", "--steps", 2, "--lr", 0.1, "--keep", "last", "--init",
            "encoder", "--encoder-file", trained[0], "--val", 0, "--quiet", *common)
    assert r.exit_code == 0, r.output  # the fit trains on from the refined state
    assert not torch.equal(Instruction.load(tmp_path / "fit2.inst").tensors["visii.learned"],
                           inst.tensors["visii.learned"])
    for command, extra in (("encode", ("--encoder", trained[0])), ("fit", ())):
        r = run(command, pairs_dir, "-o", tmp_path / "bad.inst", *extra, "--encoder-refine", -1, "--model",
                tiny_model_dir)
        errors = [line for line in r.output.splitlines() if line.startswith("Error")]
        assert r.exit_code == 2 and errors == ["Error: Invalid value for '--encoder-refine': must be at least 0, "
                                               "not -1"], r.output
    r = run("fit", pairs_dir, "-o", tmp_path / "bad.inst", "--encoder-refine", 3, "--model", tiny_model_dir)
    lines = messages(r.output)
    assert r.exit_code == 1 and len(lines) == 1 and "only with --init encoder" in lines[0], r.output
    assert not (tmp_path / "bad.inst").exists()


def test_invert_encode_checks_its_refinement_arguments_by_their_keywords_before_any_work(tmp_path):
    # before: checked only once the model, the encoder and CLIP were loaded, and named as the fit's options
    # ("option 'encoder_refine'"), which invert.encode does not take
    import math

    import invert
    from invert.errors import InvertError

    for name, value, words in (("refine", -1, "at least 0"), ("refine", 2.5, "a whole number"),
                               ("refine", True, "a whole number"), ("refine_lr", math.nan, "finite"),
                               ("refine_lr", 0.0, "above 0"), ("seed", "1", "a whole number")):
        with pytest.raises(InvertError, match=f"^option '{name}': .*{words}"):  # the pairs are not even looked for
            invert.encode(tmp_path / "no pairs here", model="toy", **{name: value})
