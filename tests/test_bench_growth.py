"""The growth benchmark (benchmarks.growth) on the tiny model: each dimension's values run, interleaved, with
their figures relative to the first; fit-batch runs its shards as separate processes."""
import shutil

import pytest

from benchmarks import growth

pytestmark = pytest.mark.bench  # run by .ci/run after README's command (pyproject.toml)


@pytest.mark.parametrize("dimension", ["pairs", "parts", "apply-batch"])
def test_each_value_is_timed_every_cycle_relative_to_the_first(tiny_model_dir, dimension):
    lines = []
    out = growth.grow(dimension, [2, 1], model=str(tiny_model_dir), steps=1, apply_steps=1, cycles=2,
                      warmup_cycles=1, log=lines.append)
    assert [r["value"] for r in out["rows"]] == [1, 2]  # smallest first, so each peak is its own
    first, second = out["rows"]
    assert first["vs_first"] == 1 and second["vs_first"] > 0 and len(second["cycles"]) == 2
    assert all(r["seconds_per_step"] > 0 and r["peak_memory_mb"] > 0 for r in out["rows"])
    assert [line.split(":")[0] for line in lines] == [f"{when} {dimension} {v}" for when in ("warm-up", "cycle 1",
                                                                                          "cycle 2") for v in (1, 2)]
    assert out["method"] == ("brush" if dimension == "parts" else "visii")
    if dimension == "apply-batch":
        assert second["images_per_s_20_steps"] > 0 and second["seconds_per_call"] > second["seconds_per_step"]
    assert f"| {dimension} |" in growth.format_table(out)


def test_fit_batch_shards_the_sets_over_processes(tiny_model_dir, pairs_dir, tmp_path):
    for name in ("a", "b"):
        shutil.copytree(pairs_dir, tmp_path / "sets" / name)
    out = growth.fit_batch(tmp_path / "sets", [2], model=str(tiny_model_dir), steps=1, cycles=1, log=lambda line: None)
    (row,) = out["rows"]
    assert out["sets"] == 2 and row["value"] == 2 and row["sets_per_hour"] > 0
