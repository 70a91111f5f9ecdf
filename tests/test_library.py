"""Instruction libraries: the file, the choice of instructions, the mix, and the CLI (tiny model)."""
import json
import math
from dataclasses import replace

import pytest
import torch
from conftest import float_noise, messages, scene, tiny_fit
from safetensors.torch import load_file, save_file

from invert.api import load_method
from invert.errors import InstructionFileError, InvertError
from invert.fitting.losses import clip_direction
from invert.instruction import Instruction
from invert.library import Entry, Library, build_library, mix_entries

EDITS = {  # name -> (method, init text, after image of scene i); the init texts differ in token count
    "night": ("brush", "make it night", lambda i: scene(i, night=True)),
    "flip": ("brush", "flip the picture from left to right", lambda i: scene(i).transpose(0)),
    "dark": ("visii", "darker", lambda i: scene(i).point(lambda v: v // 3)),
}


@pytest.fixture(scope="module")
def insts(editor, clip, tmp_path_factory):
    """One instruction per edit in EDITS, fitted for a step on 3 pairs, in a folder."""
    folder = tmp_path_factory.mktemp("insts")
    for name, (method, text, after) in EDITS.items():
        befores, afters = [scene(i) for i in range(3)], [after(i) for i in range(3)]
        options = {"parts": 2} if method == "brush" else {}
        inst = tiny_fit(editor, befores, afters, method, clip=clip, steps=1, init_text=text, **options)
        inst.save(folder / f"{name}.inst")
    return folder


def fake(name: str, key, method: str = "brush") -> Entry:
    return Entry(name, Instruction(method, {"clip.direction": torch.as_tensor(key, dtype=torch.float32)},
                                   {"model_fingerprint": "f", "clip_model": "c"}))


def test_build_save_load_round_trip(insts, tmp_path):
    lib = build_library([insts])
    assert [e.name for e in lib.entries] == ["dark", "flip", "night"] and lib.methods == {"brush": 2, "visii": 1}
    path = lib.save(tmp_path / "lib.safetensors")
    with pytest.raises(InvertError, match="already exists"):
        lib.save(path)
    loaded = Library.load(path)
    for a, b in zip(lib.entries, loaded.entries):
        assert a.name == b.name and a.method == b.method and a.instruction.meta == b.instruction.meta
        assert a.instruction.tensors.keys() == b.instruction.tensors.keys()
        assert all(torch.equal(t, b.instruction.tensors[k]) for k, t in a.instruction.tensors.items())
        assert torch.equal(b.key, Instruction.load(insts / f"{a.name}.inst").tensors["clip.direction"])


def test_bad_library_files(insts, tmp_path):
    path = build_library([insts]).save(tmp_path / "lib.safetensors")
    tensors = load_file(str(path))
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    tensors["0/clip.direction"] = tensors["0/clip.direction"] + 1  # a changed value: the checksum no longer fits
    save_file(tensors, str(tmp_path / "tampered.safetensors"), metadata=meta)
    with pytest.raises(InstructionFileError, match="checksum mismatch"):
        Library.load(tmp_path / "tampered.safetensors")
    with pytest.raises(InstructionFileError, match="not an instruction library.*invert.inst"):
        Library.load(insts / "night.inst")
    save_file(load_file(str(path)), str(tmp_path / "bad-listing.safetensors"), metadata={**meta, "instructions": "["})
    with pytest.raises(InstructionFileError, match="'instructions' is missing or malformed"):
        Library.load(tmp_path / "bad-listing.safetensors")


def test_refuses_keyless_and_mixed_models(insts, tmp_path):
    night = Instruction.load(insts / "night.inst")
    keyless = Instruction(night.method, {k: v for k, v in night.tensors.items() if k != "clip.direction"}, night.meta)
    keyless.save(tmp_path / "keyless.inst")
    with pytest.raises(InstructionFileError, match="keyless.inst: has no CLIP direction"):
        build_library([insts / "night.inst", tmp_path / "keyless.inst"])
    for field, what in (("model_fingerprint", "base models"), ("clip_model", "CLIP models")):
        other = Instruction(night.method, night.tensors, replace(night.meta, **{field: "something else"}))
        other.save(tmp_path / f"other_{field}.inst")
        with pytest.raises(InvertError, match=f"different {what}") as err:
            build_library([insts / "night.inst", tmp_path / f"other_{field}.inst"])
        assert "\n" not in str(err.value)
    with pytest.raises(InvertError, match="two instructions are named 'night'"):
        build_library([insts / "night.inst", insts])


def test_weights_pick_a_planted_instruction():
    torch.manual_seed(0)
    direction = torch.randn(16)
    lib = Library([fake(f"random{i}", torch.randn(16)) for i in range(8)] + [fake("planted", 3 * direction)])
    chosen, weights = lib.choose(direction)
    assert chosen[0].name == "planted" and weights[0] == max(weights) and sum(weights) == pytest.approx(1)
    assert weights == sorted(weights, reverse=True)
    chosen, weights = lib.choose(direction, top=1)
    assert [e.name for e in chosen] == ["planted"] and weights == [1.0]
    chosen, weights = lib.choose(direction, top=3)
    assert len(chosen) == 3 and sum(weights) == pytest.approx(1)


def test_temperature_sharpens_and_flattens():
    direction = torch.tensor([1.0, 0.0, 0.0])
    lib = Library([fake("near", [1.0, 0.2, 0.0]), fake("half", [1.0, 1.0, 0.0]), fake("far", [0.0, 0.0, 1.0])])
    planted = [lib.choose(direction, temperature=t)[1][0] for t in (10.0, 0.3, 0.1, 0.01)]
    assert planted == sorted(planted) and planted[0] < 0.4 and planted[-1] > 0.999
    with pytest.raises(InvertError, match="temperature"):
        lib.choose(direction, temperature=0)
    # checked as apply's --temperature and --best are: before, a temperature of 1000 (past the flag's 100) was
    # taken, "0.1" and top=2.5 were TypeErrors, top=True mixed one instruction, and -1 was refused as "--top"
    for name, value, words in (("temperature", 1000.0, "must be at most 100"), ("temperature", "0.1", "a number"),
                               ("temperature", math.nan, "finite"), ("top", 2.5, "a whole number"),
                               ("top", True, "a whole number"), ("top", 0, "at least 1")):
        with pytest.raises(InvertError, match=f"^option '{name}': .*{words}"):
            lib.choose(direction, **{name: value})
    assert len(lib.choose(direction, temperature=100, top=2.0)[0]) == 2
    mixed = Library(lib.entries + [fake("v", [1.0, 0.0, 0.0], "visii")])
    with pytest.raises(InvertError, match=r"several methods: brush \(3\), visii \(1\); choose one with --method"):
        mixed.choose(direction)
    assert [e.name for e in mixed.choose(direction, method="visii")[0]] == ["v"]


def test_mix_of_different_token_counts(insts, editor):
    """The mix is the method's own: token counts widened to the largest, the learned K/V's changes and the init
    encodings weighted (with weights summing to 1, the weighted sum of both); an instruction of weight 0 takes no
    part."""
    entries = {e.name: e for e in build_library([insts]).entries}
    night, flip = entries["night"], entries["flip"]
    a, b = load_method(night.instruction, editor), load_method(flip.instruction, editor)
    assert a.num_tokens < b.num_tokens
    mixed, chosen, weights = mix_entries([night, flip], [1.0, 0.0], editor)
    for key, value in a.tensors().items():
        torch.testing.assert_close(mixed.tensors[key], value, rtol=0, atol=0)
    wide = a.widen(b.num_tokens).tensors()
    mixed, _, _ = mix_entries([night, flip], [0.5, 0.5], editor)
    for key, value in b.tensors().items():
        half = (wide[key] + value) / 2  # a weighted sum in fp32 rounds at the tensors' scale (see float_noise)
        torch.testing.assert_close(mixed.tensors[key], half, rtol=0, atol=float_noise(half))
    assert mixed.meta.num_tokens == b.num_tokens and mixed.meta.init_text == night.instruction.meta.init_text


def test_instruction_for_new_pairs(insts, editor, clip):
    lib = build_library([insts])
    befores, afters = [scene(i) for i in range(3)], [scene(i, night=True) for i in range(3)]
    inst, chosen, weights = lib.instruction_for(befores, afters, editor=editor, clip=clip, method="brush", top=1)
    assert [e.name for e in chosen] == ["night"] and weights == [1.0], "the night exemplars' own direction"
    direction = clip_direction(clip, befores, afters)
    torch.testing.assert_close(inst.tensors["clip.direction"], direction, rtol=0, atol=float_noise(direction))
    assert "night 1.0000" in inst.meta.library


def test_apply_library(insts, editor, clip, tmp_path):
    from invert.library import apply_library

    path = build_library([insts]).save(tmp_path / "lib.safetensors")
    scene(0).save(tmp_path / "b.png")
    scene(0, night=True).save(tmp_path / "a.png")
    results, chosen = apply_library(path, [scene(9)], (tmp_path / "b.png", tmp_path / "a.png"), editor=editor,
                                    clip=clip, method="brush", steps=2)
    assert len(results) == 1 and results[0].size == scene(9).size
    assert {name for name, _ in chosen} == {"night", "flip"} and chosen[0][1] >= chosen[1][1]
    assert sum(w for _, w in chosen) == pytest.approx(1)


def test_cli_build_inspect_apply(run, insts, tmp_path):
    lib = tmp_path / "lib.safetensors"
    r = run("library", "build", insts, "-o", lib, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["methods"] == {"brush": 2, "visii": 1}
    assert run("library", "build", insts, "-o", lib).exit_code == 1, "no overwrite without --force"
    r = run("library", "inspect", lib)
    assert r.exit_code == 0 and "night" in r.output and "flip" in r.output
    cos = json.loads(run("library", "inspect", lib, "--json").stdout)["key_cosines"]
    assert cos["night"]["night"] == pytest.approx(1, abs=1e-3)

    pairs = []
    for i in range(3):
        b, a = tmp_path / f"b{i}.png", tmp_path / f"a{i}.png"
        scene(i).save(b)
        scene(i, night=True).save(a)
        pairs += ["--before", b, "--after", a]
    image = tmp_path / "photo.png"
    scene(9).save(image)
    out = tmp_path / "out.png"
    r = run("apply", "--library", lib, *pairs, image, "-o", out, "--method", "brush", "--steps", 2)
    assert r.exit_code == 0, r.output
    assert out.exists() and f"wrote {out}" in r.stdout
    lines = messages(r.stderr)
    assert "2 brush instructions mixed" in lines[0], r.stderr
    assert lines[1].split()[1] == "night" and float(lines[1].split()[0]) > float(lines[2].split()[0])
    r = run("apply", "--library", lib, *pairs, image, "-o", tmp_path / "out2.png", "--steps", 2)
    assert r.exit_code == 1 and "several methods" in r.output and "--method" in r.output
    r = run("apply", "--library", lib, "--before", image, image, "-o", tmp_path / "x.png")
    assert r.exit_code == 1 and "as many --before as --after" in r.output
    r = run("apply", "--before", image, "--after", image, image, "-o", tmp_path / "x.png")
    assert r.exit_code == 1 and "give --library too" in r.output
    r = run("apply", insts / "night.inst", "--library", lib, *pairs, image, "-o", tmp_path / "x.png")
    assert r.exit_code == 1 and "not both" in r.output


def test_a_rerun_with_another_temperature_or_best_is_not_taken_for_the_same_settings(run, insts, tmp_path):
    """They change the library's mix, so the result: a rerun refuses the result made otherwise (before, it was
    skipped as 'made with these settings')."""
    lib = tmp_path / "lib.safetensors"
    assert run("library", "build", insts, "-o", lib).exit_code == 0
    scene(0).save(tmp_path / "b.png")
    scene(0, night=True).save(tmp_path / "a.png")
    scene(9).save(tmp_path / "photo.png")
    out = tmp_path / "out.png"
    command = ["apply", "--library", lib, "--before", tmp_path / "b.png", "--after", tmp_path / "a.png",
               tmp_path / "photo.png", "-o", out, "--method", "brush", "--steps", 1]
    assert run(*command).exit_code == 0
    assert "skipped 1 result made with these settings" in run(*command).stderr
    for other in (("--temperature", 5), ("--best", 1)):
        r = run(*command, *other)
        assert r.exit_code == 1 and "made with other settings" in r.output, r.output
