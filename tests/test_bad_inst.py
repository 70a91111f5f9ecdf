"""Untrusted .inst files and VISII imports: refused with a clear error, never unpickled."""
import dataclasses
import json
import os
import pickle
import struct
import tempfile
import typing
from pathlib import Path

import pytest
import torch
from conftest import messages, scene
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from invert.api import load_method
from invert.errors import InstructionFileError, InvertError
from invert.instruction import MAX_HEADER_BYTES, Instruction, Metadata, tensors_sha256

WIDTH = 32  # the tiny text encoder's


def visii_instruction(init_shape=(1, 77, WIDTH), learned_shape=(1, 3, WIDTH), **meta):
    return Instruction("visii", {"visii.init": torch.randn(init_shape), "visii.learned": torch.randn(learned_shape)},
                       {"base_model": "toy", "guidance": {"text": 7.5, "image": 1.5}, "noise_seed": 0, **meta})


@pytest.fixture
def good(tmp_path):
    path = tmp_path / "good.inst"
    visii_instruction(init_text="make it night").save(path)
    return path


def refused(path, *words):
    with pytest.raises(InstructionFileError) as caught:
        Instruction.load(path)
    message = str(caught.value)
    assert message.startswith(str(path)) and "\n" not in message
    for word in words:
        assert word in message, message
    return message


def test_pickles_renamed_inst_are_never_unpickled(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return os.mkdir, (str(marker),)

    raw = tmp_path / "raw.inst"
    raw.write_bytes(pickle.dumps(Exploit(), protocol=4))
    refused(raw, "PyTorch pickle", "never unpickles", "import-visii")
    archive = tmp_path / "zip.inst"
    torch.save({"x": torch.ones(2)}, archive)
    refused(archive, "PyTorch pickle")
    assert not marker.exists()


@pytest.mark.parametrize("keep", [0, 5, 8, 20, -40, -1])
def test_truncated_files(good, keep):
    data = good.read_bytes()
    good.write_bytes(data[:keep])
    refused(good, "truncated" if keep <= 20 else "unreadable safetensors")


@pytest.mark.parametrize("length", [MAX_HEADER_BYTES + 1, 1 << 62])
def test_oversized_header_is_refused_before_parsing(tmp_path, length):
    path = tmp_path / "big.inst"
    path.write_bytes(struct.pack("<Q", length) + b"{}")
    refused(path, f"header of {length} bytes is over")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_values(tmp_path, value):
    inst = visii_instruction()
    inst.tensors["visii.learned"][0, 1, 2] = value
    inst.save(tmp_path / "x.inst")
    refused(tmp_path / "x.inst", "'visii.learned' holds NaN or inf")


def raw_instruction(path: Path, **strings: str) -> Path:
    """A well-formed visii .inst file whose metadata strings are ``strings``, whatever they hold."""
    tensors = {"visii.init": torch.randn(1, 77, WIDTH), "visii.learned": torch.randn(1, 3, WIDTH)}
    save_file(tensors, path, metadata={"format": "invert.inst", "version": "2", "method": "visii", **strings,
                                       "tensor_sha256": tensors_sha256(tensors)})
    return path


@pytest.mark.parametrize("key, value, words", [
    ("guidance", "[7.5]", "metadata 'guidance': expected a JSON object"),
    ("guidance", '{"text": "loud"}', "metadata 'guidance': expected a number, not 'loud'"),
    ("guidance", '{"text": 1e30}', "metadata 'guidance': must be at most 30"),
    ("exemplars", '{"a": 1}', "metadata 'exemplars': expected a JSON list"),
    ("options", "{not json", "metadata 'options' is not valid JSON"),
    ("noise_seed", "zero", "metadata 'noise_seed' is not a whole number"),
    ("noise_seed", str(2**80), "metadata 'noise_seed': must be at most 9223372036854775807, not 1208925819"),
    ("steps", "1e3", "metadata 'steps' is not a whole number"),
    ("final_loss", "nan", "metadata 'final_loss': must be a finite number, not nan"),
])
def test_metadata_of_the_wrong_type_or_out_of_range(tmp_path, key, value, words):
    refused(raw_instruction(tmp_path / "x.inst", **{key: value}), words)


def stored_bad_values(kind, limits) -> list[str]:
    """Metadata strings a field of ``kind`` and ``limits`` refuses."""
    args = [a for a in typing.get_args(kind) if a is not type(None)] or [kind]
    kind = args[0]
    if kind in (dict, list):
        return ["{not json", "[1]" if kind is dict else "{}", "3"]
    if kind is str:
        return []  # any text is text
    values = ["x", "[1]", "nan", "inf", "-inf"] + (["2.5", "1e3", str(2**80)] if kind is int else ["1e400"])
    low, high = limits.get("minimum"), limits.get("maximum")
    values += [str(low - 1)] if low is not None else []
    values += [str(high * 2 if high else 1)] if high is not None else []
    return values


FIELDS = [(f.name, typing.get_type_hints(Metadata)[f.name], f.metadata) for f in dataclasses.fields(Metadata)]


@pytest.mark.parametrize("name, kind, limits", FIELDS, ids=[f[0] for f in FIELDS])
def test_every_metadata_field_is_checked_when_read(tmp_path, name, kind, limits):
    """Generated from the metadata dataclass: a new field is covered without a line here."""
    key = "guidance" if name.endswith("_guidance") else name
    for value in stored_bad_values(kind, limits):
        if key == "guidance":  # one JSON object of both scales: the bad value as JSON would hold it
            value = json.dumps({name.removesuffix("_guidance"): value if value == "x" else json.loads(
                value.replace("-inf", "-Infinity").replace("inf", "Infinity").replace("nan", "NaN"))})
        message = refused(raw_instruction(tmp_path / "x.inst", **{key: value}), f"metadata '{key}'")
        assert len(message) < 300, message


def test_a_seed_past_the_generator_in_a_file_is_one_line_from_apply(run, tmp_path):
    path = raw_instruction(tmp_path / "big.inst", noise_seed=str(2**80), base_model="toy")
    scene(0).save(tmp_path / "in.png")
    r = run("apply", path, tmp_path / "in.png", "-o", tmp_path / "out.png", "--steps", 1)
    assert r.exit_code == 1 and messages(r.output) == [f"Error: {path}: metadata 'noise_seed': must be at most "
                                                       f"9223372036854775807, not 1208925819614629174706176"]
    assert not (tmp_path / "out.png").exists()


@pytest.mark.parametrize("init_shape, learned_shape, words", [
    ((1, 77, 16), (1, 3, 16), "prompt embedding has shape (1, 77, 16)"),
    ((1, 64, WIDTH), (1, 3, WIDTH), "prompt embedding has shape (1, 64, 32)"),
    ((1, 77, WIDTH), (1, 0, WIDTH), "does not hold 1 to 75 learned token positions"),
    ((1, 77, WIDTH), (1, 76, WIDTH), "does not hold 1 to 75"),
    ((1, 77, WIDTH), (1, 3, 16), "does not match its prompt embedding"),
    ((1, 77, WIDTH), (3, WIDTH), "does not match its prompt embedding"),
])
def test_tensors_of_the_wrong_shape_for_the_model(editor, tmp_path, init_shape, learned_shape, words):
    path = tmp_path / "shape.inst"
    visii_instruction(init_shape, learned_shape).save(path)
    with pytest.raises(InstructionFileError) as caught:
        load_method(Instruction.load(path), editor)
    assert str(caught.value).startswith(f"{path}: ") and words in str(caught.value)


def test_brush_tensors_of_the_wrong_shape(editor, tmp_path):
    layers = list(editor.instruction_kv_layers())
    kv = {f"brush.{n}.{x}": torch.randn(2, 3, 5) for n in layers for x in "kv"}
    inst = Instruction("brush", {"brush.init": torch.randn(1, 77, 8), **kv}, {}, path="x.inst")
    with pytest.raises(InstructionFileError, match=r"x.inst: its prompt embedding has shape \(1, 77, 8\)"):
        load_method(inst, editor)
    inst = Instruction("brush", {"brush.init": torch.randn(1, 77, 32), **kv}, {}, path="x.inst")
    with pytest.raises(InstructionFileError, match=r"x.inst: brush K/V of layer .* not \(2, 3, 32\)"):
        load_method(inst, editor)
    v1 = Instruction("brush", {"brush.init": torch.randn(1, 77, 32), "brush.k": torch.randn(2, 3, 5),
                               "brush.v": torch.randn(2, 3, 5)}, {"extra": {"layers": []}}, path="x.inst")
    with pytest.raises(InstructionFileError, match=r"x.inst: brush K/V of shape \(2, 3, 5\) do not match"):
        load_method(v1, editor)


def test_a_wrong_shape_stops_apply_with_the_file_name(run, tiny_model_dir, tmp_path):
    path = tmp_path / "wide.inst"
    visii_instruction((1, 77, 48), (1, 3, 48), base_model=str(tiny_model_dir)).save(path)
    scene(0).save(tmp_path / "in.png")
    r = run("apply", path, tmp_path / "in.png", "-o", tmp_path / "out.png", "--steps", 1)
    assert r.exit_code == 1 and f"{path}: its prompt embedding has shape (1, 77, 48)" in r.output
    assert not (tmp_path / "out.png").exists()


# Property-based: whatever the bytes, load() returns or raises InstructionFileError, nothing else.

def load_outcome(data: bytes):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f.inst"
        path.write_bytes(data)
        try:
            return Instruction.load(path)
        except InstructionFileError:
            return None


GOOD = None


def good_bytes() -> bytes:
    global GOOD
    if GOOD is None:
        with tempfile.TemporaryDirectory() as tmp:
            visii_instruction(init_text="make it night").save(Path(tmp) / "g.inst")
            GOOD = (Path(tmp) / "g.inst").read_bytes()
    return GOOD


@settings(max_examples=80, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_are_refused(data):
    assert load_outcome(data) is None


@settings(max_examples=80, deadline=None)
@given(st.data())
def test_any_truncation_or_flipped_byte_is_caught_or_harmless(data):
    """A truncated file is refused; a flipped bit is refused or (inside a metadata string) loads with the very
    same tensors, which the checksum guarantees."""
    raw = good_bytes()
    cut = data.draw(st.integers(0, len(raw) - 1))
    assert load_outcome(raw[:cut]) is None
    at, bit = data.draw(st.integers(0, len(raw) - 1)), data.draw(st.integers(0, 7))
    flipped = bytearray(raw)
    flipped[at] ^= 1 << bit
    loaded = load_outcome(bytes(flipped))
    if loaded is not None:
        original = load_outcome(raw)
        assert loaded.tensors.keys() == original.tensors.keys()
        assert all(torch.equal(loaded.tensors[k], original.tensors[k]) for k in loaded.tensors)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                                max_size=3), max_leaves=6)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(["guidance", "exemplars", "options", "phrases", "extra", "seed", "noise_seed",
                                        "steps", "method", "init_text", "version"]),
                       JSON.map(json.dumps) | st.text(max_size=8), max_size=5))
def test_any_metadata_loads_or_is_refused(meta):
    """Well-formed safetensors with any metadata: refused with InstructionFileError, or loaded with metadata
    of the types apply relies on."""
    tensors = {"visii.learned": torch.zeros(1, 2, 4)}
    header = {"format": "invert.inst", "version": "1", **meta, "tensor_sha256": tensors_sha256(tensors)}
    with tempfile.TemporaryDirectory() as tmp:
        save_file(tensors, Path(tmp) / "m.inst", metadata=header)
        data = (Path(tmp) / "m.inst").read_bytes()
    loaded = load_outcome(data)
    if loaded is not None:
        assert all(isinstance(g, float) and 0 <= g <= 30 for g in loaded.meta.guidance)
        assert isinstance(loaded.meta.noise_seed, int) and 0 <= loaded.meta.noise_seed < 2**63


# Import of the official VISII code's saved prompt embedding.

def official_file(editor, folder: Path, text="make it night", learned_shift=0.5) -> tuple[Path, torch.Tensor]:
    """What VISII's training loop saves: the (3, 77, d) prompt batch, learned between BOS and EOS."""
    folder.mkdir(parents=True, exist_ok=True)
    enc = editor.encode_text([text, "", ""])
    embeds = enc.embeds.clone()
    eos = enc.eos[0]
    embeds[0, 1:eos] += learned_shift
    embeds.requires_grad_(True)
    torch.save(embeds, folder / "prompt_embeds_999.pt")
    (folder.parent / "learned_prompt.txt").write_text(text)
    return folder / "prompt_embeds_999.pt", embeds.detach()[0, 1:eos]


def test_import_visii_and_apply(run, editor, tiny_model_dir, tmp_path):
    path, learned = official_file(editor, tmp_path / "log" / "exp")
    out = tmp_path / "imported.inst"
    r = run("import-visii", path, "-o", out, "--model", tiny_model_dir)
    assert r.exit_code == 0, r.output
    assert "3 learned tokens" in r.output and "'make it night'" in r.output
    inst = Instruction.load(out)
    assert inst.method == "visii" and torch.equal(inst.tensors["visii.learned"][0], learned)
    assert inst.meta.imported_from.startswith("VISII prompt_embeds_999.pt (sha256 ")
    scene(1).save(tmp_path / "in.png")
    r = run("apply", out, tmp_path / "in.png", "-o", tmp_path / "edited.png", "--steps", 2)
    assert r.exit_code == 0, r.output


def test_import_visii_refuses_code_in_the_pickle(run, tiny_model_dir, tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return os.mkdir, (str(marker),)

    path = tmp_path / "prompt_embeds_0.pt"
    torch.save(Exploit(), path)
    r = run("import-visii", path, "-o", tmp_path / "x.inst", "--model", tiny_model_dir, "--init-text", "x")
    assert r.exit_code == 1 and "not a tensor file that can be read safely" in r.output
    assert len(messages(r.output)) == 1
    assert not marker.exists() and not (tmp_path / "x.inst").exists()


@pytest.mark.parametrize("content, init_text, words", [
    ({"embeds": torch.zeros(1, 77, WIDTH)}, "x", "found a dict"),
    (torch.zeros(5, WIDTH), "x", "prompt embedding of shape (1, 5, 32)"),
    (torch.zeros(1, 77, WIDTH, dtype=torch.long), "x", "found a torch.int64 tensor"),
    (torch.full((1, 77, WIDTH), float("nan")), "x", "NaN or inf"),
    ("official", "make it day and rainy", "not model"),
    ("official", None, "no learned_prompt.txt beside it; pass --init-text"),
])
def test_import_visii_bad_files(editor, tmp_path, content, init_text, words):
    from invert.visii_import import import_visii

    if content == "official":
        path, _ = official_file(editor, tmp_path / "a" / "b")
        if init_text is None:
            (tmp_path / "a" / "learned_prompt.txt").unlink()
    else:
        path = tmp_path / "e.pt"
        torch.save(content, path)
    with pytest.raises(InvertError) as caught:
        import_visii(path, editor, init_text)
    assert str(caught.value).startswith(str(path)) and words in str(caught.value)


def test_a_scalar_tensor_is_checksummed_not_a_crash(tmp_path):
    inst = visii_instruction()
    inst.tensors["scalar"] = torch.tensor(3.0)
    inst.save(tmp_path / "s.inst")
    assert Instruction.load(tmp_path / "s.inst").tensors["scalar"] == 3.0


@pytest.mark.parametrize("key, value", [("validation", '{"curve": [[0, -Infinity]], "no_edit": 20.0}'),
                                        ("init_scores", '{"x": NaN}'), ("options", '{"lr": Infinity}')])
def test_inspect_json_of_non_finite_numbers_is_valid_json(run, tmp_path, key, value):
    """A fit records the -inf score of a non-finite edit in its validation curve (and an edited file may hold
    NaN): --json printed them as NaN / -Infinity, which are not JSON (jq refused the output); they are null."""
    path = raw_instruction(tmp_path / "x.inst", **{key: value})
    r = run("inspect", path, "--json")
    assert r.exit_code == 0, r.output

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    json.loads(r.stdout, parse_constant=refuse)
    assert "null" in r.stdout
