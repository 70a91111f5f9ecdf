"""The shell scripts in examples/ that users copy: all parse, and apply_every_instruction.sh runs end to end."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize("script", sorted(EXAMPLES.glob("*.sh")), ids=lambda p: p.name)
def test_example_script_parses(script):
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.processes  # several invert processes, each importing torch: .ci/run runs it after README's command
def test_apply_every_instruction(run, tiny_model_dir, pairs_dir, tmp_path):
    tests = tmp_path / "tests"
    shutil.copytree(pairs_dir, tests / "night" / "test")
    shutil.copytree(pairs_dir / "before", tests / "other" / "test" / "before")  # no afters: applied, not scored
    insts = tmp_path / "insts"
    insts.mkdir()
    r = run("fit", pairs_dir, "-o", insts / "night.inst", "--model", tiny_model_dir, "--resolution", 32,
            "--steps", 2, "--init-text", "x")
    assert r.exit_code == 0, r.output

    out = tmp_path / "out"
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")

    def script():
        return subprocess.run(["bash", str(EXAMPLES / "apply_every_instruction.sh"), str(insts), str(tests),
                               str(out), "--steps", "2", "--device", "cpu"],
                              env=env, capture_output=True, text=True, timeout=300)

    proc = script()
    assert proc.returncode == 0, proc.stderr[-4000:]
    for set_name in ("night", "other"):
        assert sorted(p.name for p in (out / "night" / set_name).iterdir()) == ["0.png", "1.png", "2.png"]
    assert sorted(p.name for p in (out / "night").iterdir() if p.is_file()) == ["night.json", "night.sheet.png"]
    psnr = json.loads((out / "night" / "night.json").read_text())["mean"]["psnr"]
    header, row = proc.stdout.splitlines()
    assert "mean PSNR" in header and row.split() == ["night", "night", f"{psnr:.2f}"]

    again = script()  # everything is done: nothing is applied or scored again, and the table is the same
    assert again.returncode == 0 and again.stdout == proc.stdout, again.stderr[-4000:]
    assert "apply" not in again.stderr and "eval" not in again.stderr
