"""The prepared GPU run (examples/gpu_speed.sh, benchmarks.gpu) on its CPU path: the script as a user runs it,
on the toy model, every measurement of the IP2P table, the JSON and Markdown it writes; every other registered
backbone on its tiny configs, each method with and without --low-memory; and its robustness: a failing or
overlong measurement is recorded, a part past its share of the budget starts nothing more, the run goes on."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks import gpu
from invert.backbones import BACKBONES, backbone_class, backbone_of

pytestmark = pytest.mark.bench  # run by .ci/run after README's command (pyproject.toml)

SCRIPT = Path(__file__).resolve().parent.parent / "examples" / "gpu_speed.sh"
TABLE = gpu.table_backbone(gpu.TINY)  # the IP2P table's backbone
OTHERS = [name for name in gpu.MODELS if name != TABLE]


def test_the_script_on_the_tiny_path_measures_every_cell_and_writes_json_and_markdown(tmp_path):
    # Two methods in one precision keep it under a minute on a CPU: visii shares ours' model with the reference,
    # lora (an adapter) loads the reference its own; fp16 goes through the loss scaler. The other cells run the
    # same code with another name or dtype.
    methods, precisions = ("visii", "lora"), ("fp16",)
    # The script runs `python`: this interpreter's, as an activated environment would give it.
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run(["bash", str(SCRIPT), str(tmp_path), "--tiny", "--device", "cpu", "--methods",
                           ",".join(methods), "--precisions", ",".join(precisions), "--models", TABLE], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads((tmp_path / "gpu_speed.json").read_text())
    assert summary["model"] == "toy"
    records = {(m["name"], m.get("method"), m.get("precision")): m for m in summary["measurements"]}
    assert not [m for m in records.values() if "error" in m], [m.get("error") for m in records.values()]
    assert {(name, method, precision) for name, method, precision in records if name in ("fit", "alone")} == {
        (name, method, precision) for name in ("fit", "alone") for method in methods for precision in precisions}
    for precision in precisions:
        for method in methods:
            fit = records["fit", method, precision]["result"]
            assert fit["method"] == method and fit["dtype"] == {"fp16": "float16", "bf16": "bfloat16"}[precision]
            assert fit["reference_autocast"] and fit["reference_dtype"] == fit["dtype"]  # same precision
            for key in ("steps_per_s", "reference_steps_per_s", "speedup_vs_reference", "ours_over_floor",
                        "projected_fit_seconds", "apply_images_per_s"):
                assert fit[key] > 0, (method, precision, key)
            alone = records["alone", method, precision]["result"]
            for key in ("peak_memory_mb", "low_memory_peak_memory_mb", "apply_batch_4_images_per_s"):
                assert alone[key] > 0, (method, precision, key)
    assert records["fit_vs_fp32_reference", "visii", "fp16"]["result"]["reference_dtype"] == "float32"
    table = (tmp_path / "gpu_speed.md").read_text()
    assert table.strip() in proc.stdout  # the script prints the table it wrote
    assert [line.split(" | ")[:2] for line in table.splitlines() if line.startswith("| fp16 |")] == [
        ["| fp16", "visii"], ["| fp16", "lora"]]
    assert "Host CPU" in table and "in fp16 against the reference in fp32" in table and "Not measured" not in table
    assert "Other backbones" not in table
    # the self-check projected from the default visii fit's rows: for visii only (the rows are its)
    checks = records["alone", "visii", "fp16"]["result"]["checks_over_loop"]
    assert checks > 0 and "checks_over_loop" not in records["alone", "lora", "fp16"]["result"]
    assert "The fit's self-check (issue 27)" in table and f"fp16 {checks:.0%}" in table


@pytest.mark.parametrize("name", OTHERS)
def test_every_other_backbone_is_measured_on_its_tiny_configs(name, tmp_path):
    """What a lent GPU runs on the backbone's full-size configs (random weights drawn on the device in bf16), on
    its tiny ones: each method's fit (every row of a step: brush's 5 time parts) and apply, with --low-memory and
    without; its figures mean nothing here."""
    summary = gpu.run(tmp_path, tiny=True, device="cpu", models=(name,))
    records = summary["measurements"]
    assert not [m for m in records if "error" in m], [m.get("error") for m in records]
    assert [(m["name"], m.get("method"), m.get("low_memory")) for m in records] == [("backbone_load", None, None)] + [
        ("backbone", method, low) for method in gpu.METHODS for low in (True, False)]
    for m in records[1:]:
        result = m["result"]
        assert m["backbone"] == name and m["precision"] == "bf16"
        assert result["resolution"] == 32 and result["rows"] == (5 if m["method"] == "brush" else 1)
        for key in ("seconds_per_step", "peak_memory_mb", "apply_seconds_per_image", "apply_peak_memory_mb"):
            assert result[key] > 0, key
    table = (tmp_path / "gpu_speed.md").read_text()
    assert [line.split(" | ")[:3] for line in table.splitlines() if line.startswith(f"| {name} |")] == [
        [f"| {name}", method, "32"] for method in gpu.METHODS]
    assert "IP2P" not in table and "Not measured" not in table


def test_the_run_covers_the_registry_in_its_order_with_configs_for_each_backbone():
    """No backbone is named in the script: it measures every registered one, the table's first; each has its
    shipped full-size configs and tiny ones of its own pipeline class."""
    assert gpu.MODELS == tuple(BACKBONES) and gpu.table_backbone(gpu.FULL) == TABLE == gpu.MODELS[0]
    for name in OTHERS:
        cls = backbone_class(name)
        for plan in (gpu.FULL, gpu.TINY):
            assert backbone_of(f"random:{plan.configs(cls)}") is cls, (name, plan.configs(cls))


def test_the_script_refuses_an_unknown_method_or_model(tmp_path):
    assert gpu.METHODS == ("visii", "brush", "lora") and gpu.PRECISIONS == ("fp16", "bf16")  # the default run
    for bad in (["--methods", "visii,dreambooth"], ["--models", "flux3"]):
        with pytest.raises(SystemExit):
            gpu.main(["--out", str(tmp_path), "--tiny", *bad])
    assert not (tmp_path / "gpu_speed.json").exists()


def test_a_part_past_its_share_starts_nothing_more_and_one_ending_early_leaves_its_time(tmp_path):
    run = gpu.Run(tmp_path, gpu.TINY, budget=6, device="cpu")
    run.parts([(1, lambda: [run.measure("a", lambda: time.sleep(2.5) or {"x": 1}),
                            run.measure("b", lambda: {"x": 2})]),  # 0.5 s of its 3 left: skipped
               (1, lambda: run.measure("c", lambda: time.sleep(1) or {"x": 3}, box=2.5))])
    a, b, c = run.records
    assert a["result"] == {"x": 1} and "share of the time budget is spent" in b["error"]
    assert c["result"] == {"x": 3}  # its own share, whatever the first took
    early = gpu.Run(tmp_path, gpu.TINY, budget=4, device="cpu")
    early.parts([(1, lambda: None), (1, lambda: early.measure("d", lambda: time.sleep(2.5) or {"x": 4}, box=3.5))])
    assert early.records[0]["result"] == {"x": 4}  # the first part's unused 2 s went to the second


def test_a_failing_or_overlong_measurement_is_recorded_and_the_run_goes_on(tmp_path):
    run = gpu.Run(tmp_path, gpu.TINY, budget=60, device="cpu")

    def fails():
        raise RuntimeError("out of memory")

    def sleeps():
        time.sleep(5)
        return {"never": True}

    assert run.measure("a", fails) is None
    assert run.measure("b", sleeps, box=1) is None
    assert run.measure("c", lambda: {"x": 1}) == {"x": 1}
    a, b, c = run.records
    assert a["error"] == "RuntimeError: out of memory" and "TimeBoxExceeded" in b["error"] and b["seconds"] < 3
    run.budget = 0  # spent: nothing more is started
    assert run.measure("d", lambda: {"x": 2}) is None and "budget is spent" in run.records[-1]["error"]
    written = json.loads((tmp_path / "gpu_speed.json").read_text())["measurements"]
    assert [m["name"] for m in written] == ["a", "b", "c", "d"]
    assert "- a" in (tmp_path / "gpu_speed.md").read_text()
