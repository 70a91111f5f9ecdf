"""The prepared GPU run (examples/gpu_speed.sh, benchmarks.gpu) on its CPU path: the script as a user runs it,
on the toy model, every measurement of the table, the JSON and Markdown it writes; and its robustness: a failing
or overlong measurement is recorded, the run goes on."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks import gpu

pytestmark = pytest.mark.bench  # run by .ci/run after README's command (pyproject.toml)

SCRIPT = Path(__file__).resolve().parent.parent / "examples" / "gpu_speed.sh"


def test_the_script_on_the_tiny_path_measures_every_cell_and_writes_json_and_markdown(tmp_path):
    # Two methods in one precision keep it under a minute on a CPU: visii shares ours' model with the reference,
    # lora (an adapter) loads the reference its own; fp16 goes through the loss scaler. The other cells run the
    # same code with another name or dtype.
    methods, precisions = ("visii", "lora"), ("fp16",)
    # The script runs `python`: this interpreter's, as an activated environment would give it.
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run(["bash", str(SCRIPT), str(tmp_path), "--tiny", "--device", "cpu", "--methods",
                           ",".join(methods), "--precisions", ",".join(precisions)], env=env,
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
    dits = {(m["model"], m["method"]): m["result"] for m in summary["measurements"] if m["name"] == "dit"}
    assert set(dits) == {(model, method) for model in ("flux2-klein", "flux1-kontext") for method in methods}
    for result in dits.values():
        for key in ("seconds_per_step", "peak_memory_mb", "apply_seconds_per_image", "apply_peak_memory_mb"):
            assert result[key] > 0, key
    table = (tmp_path / "gpu_speed.md").read_text()
    assert table.strip() in proc.stdout  # the script prints the table it wrote
    assert [line.split(" | ")[:2] for line in table.splitlines() if line.startswith("| fp16 |")] == [
        ["| fp16", "visii"], ["| fp16", "lora"]]
    assert "Host CPU" in table and "in fp16 against the reference in fp32" in table and "Not measured" not in table
    assert [line.split(" | ")[:2] for line in table.splitlines() if line.startswith("| flux")] == [
        [f"| {model}", method] for model in ("flux2-klein", "flux1-kontext") for method in methods]


def test_the_script_refuses_an_unknown_method(tmp_path):
    assert gpu.METHODS == ("visii", "brush", "lora") and gpu.PRECISIONS == ("fp16", "bf16")  # the default run
    assert gpu.MODELS == ("ip2p", "flux2-klein", "flux1-kontext")
    with pytest.raises(SystemExit):
        gpu.main(["--out", str(tmp_path), "--tiny", "--methods", "visii,dreambooth"])
    assert not (tmp_path / "gpu_speed.json").exists()


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
