"""The contract every registered method keeps (issue 25, item 9), run over the registry: a method registered in
invert.methods is checked here with no test of its own. Strength 0 is the init; a mix of copies is the file and
1, 0 the first; a file saved and loaded is the same instruction; a stopped fit resumes bit for bit (at stage
boundaries too); --low-memory computes the same gradients; a result does not depend on its batch; a state that
says it leaves the guidance batch's text-free rows alone edits the same with another state's; fit-batch fits as fit
does; its state tensors carry its registered prefixes."""
import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from conftest import make_trainer, scene, stop_at, tiny_fit
from test_lora import assert_same_gradients, step_gradients

import invert
from invert.api import load_method, mixed_method
from invert.errors import InvertError
from invert.fitting.checkpoint import FitState, FitStopped
from invert.instruction import Instruction
from invert.methods import RESERVED_PREFIXES, method_class, method_entry, method_names, register_method, settings_for

BEFORES = [scene(i) for i in range(2)]
AFTERS = [scene(i, night=True) for i in range(2)]
STEPS = 4
# Options that keep a method's fit small here; a method without an entry runs at its defaults.
SMALL = {"brush": {"parts": 2}}
# Options under which a method trains in stages: its resumes are checked at the stage boundaries too.
STAGED = {"brush": {"parts": 2, "parts_sequential": True}}
KEEP = "last-unless-worse"  # a rule by the validation score: its tracked state must survive a resume too
CASES = [pytest.param(name, SMALL.get(name, {}), id=name) for name in method_names()] + \
    [pytest.param(name, options, id=f"{name}-staged") for name, options in STAGED.items()]


def fit_options(options, **more):
    """A small fit, scored every 2 steps; it keeps its last state (the contract is about what it learned) unless
    ``more`` says otherwise."""
    return {"steps": STEPS, "lr": 5e-2, "init_text": "make it night", "val_every": 2, "val_steps": 2, "keep": "last",
            **options, **more}


def pixels(image):
    return np.asarray(image, dtype=np.int16)


def same_instruction(a: Instruction, b: Instruction, same_seconds: bool = False):
    """The same method, tensors and metadata (the fit's duration too when ``same_seconds``)."""
    assert a.method == b.method and a.tensors.keys() == b.tensors.keys()
    for key, value in a.tensors.items():
        assert value.dtype == b.tensors[key].dtype and np.array_equal(value.numpy(), b.tensors[key].numpy()), key
    seconds = {} if same_seconds else {"fit_seconds": None, "cost": None}  # cost: seconds per phase
    assert dataclasses.replace(a.meta, **seconds) == dataclasses.replace(b.meta, **seconds)


@pytest.fixture(scope="module")
def fits(editor, clip):
    """``fits(name, options, **more)``: a small fit of method ``name``, each made once per module."""
    made = {}

    def fit(name, options, **more):
        key = (name, json.dumps(options, sort_keys=True), json.dumps(more, sort_keys=True))
        if key not in made:
            made[key] = tiny_fit(editor, BEFORES, AFTERS, name, clip=clip, **fit_options(options, **more))
        return made[key]
    return fit


def apply(inst, editor, image=None, **options):
    return pixels(invert.apply(inst, image or scene(5), editor=editor, steps=2, **options))


@pytest.mark.parametrize("name", method_names())
class TestMethodContract:
    def options(self, name):
        return SMALL.get(name, {})

    def test_strength_zero_is_the_init(self, name, fits, editor):
        fitted, untrained = fits(name, self.options(name)), fits(name, self.options(name), steps=0)
        assert not np.array_equal(apply(fitted, editor), apply(untrained, editor)), "the fit learned something"
        assert np.array_equal(apply(fitted, editor, strength=0.0), apply(untrained, editor))

    @pytest.mark.parametrize("weights", [[0.5, 0.5], [0.3, 0.7], [0.2, 0.3, 0.5]])
    def test_a_mix_of_copies_is_the_file(self, name, fits, editor, weights):
        fitted = fits(name, self.options(name))
        mixed = apply([fitted] * len(weights), editor, weights=weights)
        assert np.array_equal(mixed, apply(fitted, editor))

    def test_a_mix_one_zero_is_the_first(self, name, fits, editor):
        first, other = fits(name, self.options(name)), fits(name, self.options(name), seed=1, init_text="dark blue")
        assert np.array_equal(apply([first, other], editor, weights=[1.0, 0.0]), apply(first, editor))
        # 0, 1 is the second's state (sampled with the first file's noise and guidance, as every mix is)
        second = mixed_method([first, other], editor, [0.0, 1.0]).tensors()
        assert all(torch.equal(v, second[k]) for k, v in load_method(other, editor).tensors().items())

    def test_a_saved_file_loads_as_the_same_instruction(self, name, fits, editor, tmp_path):
        fitted = fits(name, self.options(name))
        fitted.save(tmp_path / "x.inst")
        loaded = Instruction.load(tmp_path / "x.inst")
        loaded.save(tmp_path / "again.inst")
        # The tensors and the typed metadata come back as they were, a second round trip changes nothing, and it
        # edits alike.
        same_instruction(fitted, loaded, same_seconds=True)
        same_instruction(loaded, Instruction.load(tmp_path / "again.inst"), same_seconds=True)
        assert np.array_equal(apply(loaded, editor), apply(fitted, editor))

    def test_its_state_tensors_carry_its_registered_prefixes(self, name, fits, editor):
        prefixes = method_entry(name).prefixes
        state = set(load_method(fits(name, self.options(name)), editor).tensors())
        assert state and all(k.startswith(prefixes) for k in state), sorted(state)
        others = set(fits(name, self.options(name)).tensors) - state
        assert all(k.startswith(RESERVED_PREFIXES) for k in others), sorted(others)

    def test_low_memory_computes_the_same_gradients(self, name, fits, editor):
        method = load_method(fits(name, self.options(name)), editor)  # trained: every parameter has a gradient
        plain, low = (step_gradients(editor, method, BEFORES, AFTERS, [0, 1], low, lr=5e-2) for low in (False, True))
        assert_same_gradients(plain, low)

    def test_a_result_does_not_depend_on_its_batch(self, name, fits, editor):
        fitted, images = fits(name, self.options(name)), [scene(7), scene(8), scene(9)]
        together = [pixels(img) for img in invert.apply(fitted, images, editor=editor, steps=2)]
        for image, result in zip(images, together):
            # Another batch shape sums the CPU kernels in another order: one level of rounding at most.
            assert np.abs(apply(fitted, editor, image) - result).max() <= 1

    def test_a_state_that_says_it_leaves_the_text_free_rows_alone_edits_the_same_with_anothers(self, name, fits,
                                                                                                 editor):
        """A fit's scorer reuses the first step's text-free rows of one state for the next (Editor.sample's
        first_step) where a state says it leaves them alone (changes_text_free_rows): the fitted state, sampled
        with the rows an untrained state of another init text computed, edits as sampled on its own (one level of
        rounding: a call of other rows). A state that says it changes them is never given them."""
        fitted = load_method(fits(name, self.options(name)), editor)
        untrained = load_method(fits(name, self.options(name), steps=0, init_text="dark blue", seed=1), editor)
        if fitted.changes_text_free_rows() or untrained.changes_text_free_rows():
            pytest.skip(f"{name}'s fitted state changes the text-free rows: they are never reused for it")

        def edit(state, kept):
            with state.installed():
                return pixels(editor.sample(state, [scene(5)], steps=2, guidance=7.5, image_guidance=1.5, seed=0,
                                            noise="stream", scheduler=None, first_step=kept)[0])
        kept = {}
        edit(untrained, kept)
        assert kept, "the untrained state's text-free rows were kept"
        assert np.abs(edit(fitted, kept) - edit(fitted, None)).max() <= 1

    def test_fit_batch_fits_as_fit_does(self, name, run, tiny_model_dir, pairs_dir, tmp_path):
        sets = tmp_path / "sets"
        shutil.copytree(pairs_dir, sets / "night")
        flags = ["--model", tiny_model_dir, "--resolution", 32, "--steps", 2, "--init-text", "make it night",
                 "--method", name, "--quiet"]
        for option, value in self.options(name).items():
            flags += [f"--{option.replace('_', '-')}", value]
        r = run("fit", sets / "night", "-o", tmp_path / "fit.inst", *flags)
        assert r.exit_code == 0, r.output
        r = run("fit-batch", sets, "-o", tmp_path / "batch", *flags)
        assert r.exit_code == 0, r.output
        same_instruction(Instruction.load(tmp_path / "fit.inst"), Instruction.load(tmp_path / "batch" / "night.inst"))


@pytest.mark.parametrize("name, options", CASES)
def test_a_stopped_fit_resumes_bit_for_bit(name, options, fits, editor, clip, tmp_path):
    """Stopped after every step, at a stage boundary and either side of it included: resumed, the fit (its
    learned state, the state its --keep rule kept and the validation curve) is the uninterrupted one."""
    whole = fits(name, options, keep=KEEP)
    init = method_class(name).initialize(editor, editor.encode_text(["make it night"]), "make it night",
                                         settings_for(name, options)[1])
    stages = make_trainer(editor, BEFORES, AFTERS, init, steps=STEPS).stages
    assert (len(stages) > 1) == (options == STAGED.get(name)), "the staged cases train in stages"
    for stop in range(1, stages[-1].stop):
        with pytest.raises(FitStopped) as stopped:
            tiny_fit(editor, BEFORES, AFTERS, name, clip=clip, **fit_options(options, keep=KEEP), **stop_at(stop))
        saved = stopped.value.state.save(tmp_path / f"{stop}.ckpt")
        resumed = tiny_fit(editor, BEFORES, AFTERS, name, clip=clip, **fit_options(options, keep=KEEP),
                           resume=FitState.load(saved))
        same_instruction(whole, resumed)


def test_registering_refuses_a_taken_name_or_prefix():
    entry = method_entry(method_names()[0])
    with pytest.raises(InvertError, match="registered already"):
        register_method(entry.name, entry.location, entry.settings, ("other.",), "x", "y")
    with pytest.raises(InvertError, match="collides"):
        register_method("another", entry.location, entry.settings, entry.prefixes, "x", "y")
    with pytest.raises(InvertError, match="collides with the file"):
        register_method("another", entry.location, entry.settings, ("clip.",), "x", "y")
    assert "another" not in method_names()
