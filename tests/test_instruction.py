"""The .inst file: round trip, tamper detection, version and model checks, atomic writes."""
import json
import struct

import pytest
import torch

from invert.errors import InstructionFileError, InvertError
from invert.instruction import Instruction


def sample_instruction():
    return Instruction("visii", {"visii.learned": torch.randn(1, 4, 32), "visii.init": torch.randn(1, 77, 32)},
                       {"base_model": "toy", "model_fingerprint": "abc", "init_text": "make it night",
                        "guidance": {"text": 7.5, "image": 1.5}, "exemplars": [{"name": "0", "before": "x"}],
                        "steps": 10})


def test_round_trip_keeps_tensors_and_metadata(tmp_path):
    inst = sample_instruction()
    inst.save(tmp_path / "a.inst")
    back = Instruction.load(tmp_path / "a.inst")
    assert back.method == "visii"
    for k, v in inst.tensors.items():
        assert torch.equal(back.tensors[k], v)
    assert back.meta.guidance == (7.5, 1.5)
    assert back.meta.exemplars == [{"name": "0", "before": "x"}]
    assert back.meta.init_text == "make it night" and back.meta.steps == 10


def test_a_changed_tensor_byte_is_detected(tmp_path):
    path = tmp_path / "a.inst"
    sample_instruction().save(path)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01  # inside the last tensor's data
    path.write_bytes(bytes(data))
    with pytest.raises(InstructionFileError, match="checksum"):
        Instruction.load(path)


def _rewrite_header(path, change):
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    change(header["__metadata__"])
    new = json.dumps(header).encode()
    new += b" " * (-len(new) % 8)
    path.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n:])


@pytest.mark.parametrize("change, message", [
    (lambda m: m.update(format="something.else"), "not an .inst file"),
    (lambda m: m.update(version="99"), "newer invert"),
    (lambda m: m.update(guidance="{not json"), "not valid JSON"),
])
def test_bad_metadata_is_refused(tmp_path, change, message):
    path = tmp_path / "a.inst"
    sample_instruction().save(path)
    _rewrite_header(path, change)
    with pytest.raises(InstructionFileError, match=message):
        Instruction.load(path)


def test_not_safetensors_is_refused(tmp_path):
    path = tmp_path / "pickle.inst"
    torch.save({"x": torch.ones(2)}, path)
    with pytest.raises(InstructionFileError, match="not an .inst file"):
        Instruction.load(path)


def test_no_overwrite_without_force(tmp_path):
    path = tmp_path / "a.inst"
    path.write_text("precious")
    with pytest.raises(InvertError, match="already exists"):
        sample_instruction().save(path)
    assert path.read_text() == "precious"
    sample_instruction().save(path, force=True)
    assert Instruction.load(path).method == "visii"
    assert [p.name for p in tmp_path.iterdir()] == ["a.inst"], "no temporary file left behind"


def test_model_mismatch_is_refused_unless_allowed():
    inst = sample_instruction()
    inst.check_model("abc")
    with pytest.raises(InstructionFileError, match="allow-model-mismatch"):
        inst.check_model("def")
    inst.check_model("def", allow_mismatch=True)
