"""``invert fit-batch``: one instruction per set, skipping finished ones, sharded without coordination."""
import json
import shutil

import pytest
from click.testing import CliRunner

from invert.batch import parse_shard
from invert.cli.main import cli
from invert.errors import InvertError


def batch(model, sets, out, *extra):
    args = ["fit-batch", str(sets), "-o", str(out), "--model", str(model), "--resolution", "32", "--steps", "1",
            "--json", *map(str, extra)]
    return CliRunner().invoke(cli, args)


def test_shards_cover_the_sets_and_a_rerun_continues(tiny_model_dir, pairs_dir, tmp_path):
    sets = tmp_path / "sets"
    for name in ("a", "b", "c"):
        shutil.copytree(pairs_dir, sets / name)
    out = tmp_path / "insts"
    r = batch(tiny_model_dir, sets, out, "--shard", "1/2")
    assert r.exit_code == 0, r.output
    assert [row["set"] for row in json.loads(r.stdout)["sets"]] == ["b"]
    assert sorted(p.name for p in out.iterdir()) == ["b.inst"]
    first = (out / "b.inst").read_bytes()

    r = batch(tiny_model_dir, sets, out)
    rows = {row["set"]: row for row in json.loads(r.stdout)["sets"]}
    assert rows["b"]["status"] == "exists" and rows["a"]["status"] == rows["c"]["status"] == "fitted"
    assert rows["a"]["steps"] == 1 and rows["a"]["final_loss"] > 0
    assert (out / "b.inst").read_bytes() == first, "an existing instruction is never refitted"


def test_a_bad_set_fails_alone(tiny_model_dir, pairs_dir, tmp_path):
    sets = tmp_path / "sets"
    shutil.copytree(pairs_dir, sets / "good")
    (sets / "empty").mkdir()
    r = batch(tiny_model_dir, sets, tmp_path / "out")
    assert r.exit_code == 1
    rows = {row["set"]: row["status"] for row in json.loads(r.stdout)["sets"]}
    assert rows["good"] == "fitted" and rows["empty"].startswith("failed: ")


def test_shard_from_flag_or_launcher_environment():
    assert parse_shard("2/4", {}) == (2, 4)
    assert parse_shard(None, {"RANK": "1", "WORLD_SIZE": "2"}) == (1, 2)
    assert parse_shard(None, {}) == (0, 1)
    for bad in ("4/4", "x", "1/0"):
        with pytest.raises(InvertError):
            parse_shard(bad, {})
