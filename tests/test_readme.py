"""The shell examples of README.md and docs/*.md run as written, on the shipped toy model.

Every line of every shell code block (a block without a language) of README.md and of each page of docs/ is run,
block by block, each block in a fresh folder that holds the files the examples name (pairs/, photo.jpg,
sketch.inst, ...) but those the block itself writes. What is substituted: the model (INVERT_MODEL=toy; the
README's TINY is the tiny test model), tiny step counts (--steps 2, appended to fit, fit-batch, apply and eval when
a line has none, --init auto to fit and fit-batch when a line gives no init, and --apply-steps 2 for bench
quality). The examples that are not run are listed in SKIPPED, with why and the test that covers them instead; a
listed example that no page has any more fails the test, so the list stays true."""
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from benchmarks.cli import bench
from invert.cli.main import cli

ROOT = Path(__file__).resolve().parent.parent
TOY = ROOT / "examples" / "toy"
STEPS = "2"
SKIPPED = {  # the start of an example -> why it is not run here
    "python3 -m venv .venv": "installs invert (CI runs it: tests/test_setup_contract.py)",
    ".venv/bin/python -m pytest": "runs this test suite",
    "source .venv/bin/activate": "this test's PATH has the environment's commands already",
    ".venv/bin/pip install": "installs the UI extra",
    ".venv/bin/invert ui": "a server that runs until stopped (tests/test_ui.py starts and drives it)",
    "hf download": "needs the Hugging Face hub",
    "invert fit pairs/ -o edit.inst --model ip2p": "needs the real IP2P weights (the hub)",
    "invert fit pairs/ -o night.inst --model sdxl-ip2p": "needs SDXL InstructPix2Pix's real weights (the hub; "
                                                         "tests/backbones/test_sdxl.py fits on tiny components)",
    "invert apply night.inst photo.jpg -o out/ --model sdxl-ip2p": "needs SDXL InstructPix2Pix's real weights",
    "invert fit pairs/ --model klein": "needs FLUX.2 [klein]'s real weights (the hub; "
                                      "tests/backbones/test_flux2_klein.py fits on tiny components)",
    "invert apply edit.inst photo.png -o out/ --steps 50": "an instruction fitted on FLUX.2 [klein]'s real weights",
    "invert import-visii": "needs the real IP2P weights and a file the official VISII code wrote "
                           "(tests/test_bad_inst.py imports one on the tiny model)",
    "torchrun": "one process per GPU (tests/test_fit_batch.py runs torchrun with two CPU processes)",
    "accelerate launch": "one process per GPU",
    "sbatch": "needs a SLURM cluster",
    "examples/gpu_speed.sh": "needs a CUDA GPU (tests/test_gpu_bench.py runs the script's --tiny path on the CPU)",
    "python -m benchmarks speed --method visii --steps 2": "the full-size IP2P at 512: a GPU's work (minutes a step on a CPU)",
    "python -m benchmarks speed --method brush --low-memory": "the full-size IP2P at 512: a GPU's work",
    "OMP_NUM_THREADS=1 python -m benchmarks speed --model toy": "a timing run of minutes (its --steps must be a multiple of "
                                                        "--block); tests/test_speed.py runs the command on the tiny "
                                                        "model",
    "OMP_NUM_THREADS=1 python -m benchmarks.precision": "minutes to hours; tests/test_bench_precision.py runs "
                                                        "`precision matmul` small (`speed` and `quality` have no test)",
    "OMP_NUM_THREADS=1 python -m benchmarks.growth": "minutes; tests/test_bench_growth.py runs pairs, parts and "
                                                     "apply-batch on the tiny model (resolution has no test)",
    "python -m benchmarks.growth fit-batch": "a benchmark of minutes (tests/test_bench_growth.py runs it tiny)",
    "OMP_NUM_THREADS=1 python -m benchmarks.init_pick": "31 minutes of CPU (tests/test_quality_bench.py runs its "
                                                         "comparison and summary on the tiny model)",
    "OMP_NUM_THREADS=1 python -m benchmarks.init_shortlist": "2.5 minutes of CPU (tests/test_fit_cost.py replays its "
                                                              "rule on stored scores)",
    "OMP_NUM_THREADS=1 python -m benchmarks.selfcheck": "whole fit processes side by side, minutes "
                                                        "(tests/test_fit_cost.py runs its measure and ranks small)",
    "invert fit examples/toy/night/train -o f1000.inst": "a 1000-step fit whose denoiser rows the projection below "
                                                         "reads (a fit's cost is tested in tests/test_fit_cost.py)",
    "OMP_NUM_THREADS=1 python -m benchmarks speed --model random --resolution 512": "the full-size IP2P at 512 on the "
                                                                                    "CPU: minutes a step",
    "invert encoder train": "trains an edit encoder: minutes to hours (tests/test_encoder.py trains small ones, from "
                            "the toy world and from a folder of sets, and resumes one)",
    "OMP_NUM_THREADS=1 invert encoder train": "the shipped toy encoder's 17-minute training (tests/test_encoder.py "
                                              "trains small ones)",
    "OMP_NUM_THREADS=1 python -m benchmarks quality --model toy --device cpu": "the encoder rows over the table's "
                                                                               "edits: minutes to hours "
                                                                               "(tests/test_quality_bench.py runs "
                                                                               "them small)",
    "python -m benchmarks quality --model toy-dit": "the toy DiT's table: 30 minutes of CPU (tests/test_quality_bench.py "
                                                    "runs the benchmark small)",
    "python -m benchmarks quality --shots 10": "the table at the defaults: hours of CPU (tests/test_quality_bench.py "
                                               "runs the benchmark small, and docs/reference.md's short lines run "
                                               "here)",
    "OMP_NUM_THREADS=1 python -m benchmarks.steps_lr": "the steps x lr study: over an hour (tests/test_quality_bench.py "
                                                       "runs its snapshot scoring small)",
    "OMP_NUM_THREADS=1 python -m benchmarks.ablation": "81 minutes; no test runs this benchmark "
                                                       "(tests/test_faithful_options.py tests each option it compares)",
    "OMP_NUM_THREADS=1 python -m benchmarks.encoder_val": "encoders' instructions sampled on the toy model, a minute "
                                                          "or more (tests/test_encoder.py runs its comparison on the "
                                                          "tiny model)",
    "python -m benchmarks.library": "minutes; no test runs this benchmark (tests/test_library.py tests libraries)",
    "python -m benchmarks.lora_and_reverse": "minutes; no test runs this benchmark (tests/test_lora.py and "
                                             "tests/test_reverse.py test what it measures)",
    "python -m benchmarks.visii_clip_rules": "minutes (tests/test_bench_faithfulness.py runs it on the tiny model)",
    "python -m benchmarks.pez_init": "PEZ at 3000 steps: minutes (tests/test_bench_faithfulness.py runs it on the toy "
                                     "CLIP)",
    "python -m benchmarks.oracle": "minutes of sampling over the catalogue (tests/test_toy_dit.py runs the oracle on a "
                                   "tiny klein folder, tests/test_toy_train.py on two edits)",
    "python -m benchmarks.toy_train": "trains the toy model: an hour (tests/test_toy_train.py runs it a step a phase)",
    "python -m benchmarks.toy_dit_train": "trains the toy DiT: 90 minutes (tests/test_toy_dit.py runs it a few steps "
                                          "a phase)",
    "OMP_NUM_THREADS=1 python -m benchmarks.keep_rules": "69 minutes (tests/test_keep_rules_bench.py tests its rules "
                                                         "and its snapshot scoring on the tiny model)",
    "python examples/toy/make_examples.py": "rewrites examples/toy/ in the checkout (tests/test_toy_world.py checks "
                                            "write_pair_folder, which it calls)",
    "examples/apply_every_instruction.sh": "20 invert processes over the 4 toy sets, minutes; "
                                           "tests/test_examples.py runs it end to end on two small sets",
    "examples/quickstart.sh": "three invert processes: README runs the commands of the block after it, which run here "
                              "(test_quickstart_script_runs_the_next_block checks they are the same)",
    "time OMP_NUM_THREADS=1 examples/quickstart.sh": "the quick start, timed: README's quick-start commands run here",
}
SHELLS = {'eval "$(_INVERT_COMPLETE=zsh_source': "zsh", "_INVERT_COMPLETE=fish_source": "fish"}  # run by them


def shell_blocks(path: Path) -> list[tuple[str, list[str]]]:
    """(heading, lines) of every code block without a language (a page's shell examples), in order."""
    blocks, heading = [], ""
    fence = re.compile(r"^( *)```(\w*)$")
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("#"):
            heading = lines[i].lstrip("# ")
        match = fence.match(lines[i])
        if match:
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
            if match.group(2) == "":
                body = [line.strip() for line in lines[i + 1:end] if line.strip()]
                blocks.append((f"{heading} #{sum(h.rsplit(' #', 1)[0] == heading for h, _ in blocks) + 1}", body))
            i = end
        i += 1
    return blocks


PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCKS = [(f"{page.relative_to(ROOT)}: {heading}", block) for page in PAGES for heading, block in shell_blocks(page)]
README_BLOCKS = shell_blocks(ROOT / "README.md")


def skipped(line: str) -> str | None:
    return next((why for start, why in SKIPPED.items() if line.startswith(start)), None)


def test_the_pages_are_read():
    names = {str(page.relative_to(ROOT)) for page in PAGES}
    assert {"README.md", "docs/reference.md"} <= names
    assert any(heading.startswith("docs/") for heading, _ in BLOCKS), "no shell example found in docs/"


def test_the_skip_list_names_only_examples_the_pages_have():
    lines = [line for _, block in BLOCKS for line in block]
    gone = [start for start in [*SKIPPED, *SHELLS] if not any(line.startswith(start) for line in lines)]
    assert not gone, f"listed in SKIPPED or SHELLS but in no page's shell examples: {gone}"
    assert not any("huggingface-cli" in line for line in lines), "huggingface_hub 2 ships `hf`"


def test_quickstart_script_runs_the_next_block():
    script = (ROOT / "examples" / "quickstart.sh").read_text()
    names = {"INVERT": "invert", "OUT": "quickstart-out", "PAIRS": "examples/toy/night", "MODEL": "toy"}  # its defaults
    commands = [re.sub(r'"\$(\w+)([^"]*)"', lambda m: names[m[1]] + m[2], line).replace(" --force", "")
                for line in script.splitlines() if line.startswith('"$INVERT"')]
    block = next(lines for _, lines in README_BLOCKS if lines and lines[0].startswith("invert fit examples/toy/night/train"))
    assert commands == block


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """The files README's examples name, and the instructions they apply, made on the toy model."""
    root = tmp_path_factory.mktemp("readme")
    night = TOY / "night"
    for side in ("before", "after"):
        (root / "pairs" / side).mkdir(parents=True)
        (root / "test" / side).mkdir(parents=True)
        for name in ("000.png", "001.png", "002.png"):
            shutil.copy(night / "train" / side / name, root / "pairs" / side / name)
            shutil.copy(night / "test" / side / name, root / "test" / side / name)
    for name in ("sketch", "watercolor"):  # sets of fit-batch, named unlike examples/toy's
        shutil.copytree(root / "pairs", root / "sets" / name)
    befores = sorted((night / "test" / "before").iterdir())
    for i, name in enumerate(["photo", "img", "a", "a1", "a2"]):
        Image.open(befores[i]).save(root / f"{name}.jpg")
        Image.open(night / "test" / "after" / befores[i].name).save(root / f"{name.replace('a', 'b')}.jpg")
    (root / "photos").mkdir()
    for i, path in enumerate(befores[:2]):
        shutil.copy(path, root / "photos" / f"street{i}.png")
    (root / "fit.toml").write_text('steps = 500\nmethod = "brush"\n')
    os.symlink(ROOT / "examples", root / "examples")

    runner, pairs = CliRunner(), str(root / "pairs")

    def invert(*args: str) -> None:
        r = runner.invoke(cli, [*args, "--model", "toy", "--device", "cpu", "--quiet"], catch_exceptions=False)
        assert r.exit_code == 0, r.output

    # what the examples do with them needs no training: untrained instructions of the right kinds
    invert("fit", pairs, "-o", str(root / "sketch.inst"), "--steps", "0", "--init-text", "a sketch", "--reverse")
    invert("fit", pairs, "-o", str(root / "watercolor.inst"), "--steps", "0", "--init-text", "make it blue")
    invert("fit", pairs, "-o", str(root / "night.inst"), "--steps", "0", "--init-text", "make it night")
    r = runner.invoke(cli, ["library", "build", str(root / "watercolor.inst"), str(root / "night.inst"), "-o",
                            str(root / "lib.safetensors")])
    assert r.exit_code == 0, r.output
    return root


def written_by(block: list[str]) -> set[str]:
    """The first part of every -o path of the block: what it makes, so its fresh folder must not hold it."""
    names = set()
    for line in block:
        words = shlex.split(line, comments=True)
        names |= {Path(words[i + 1]).parts[0] for i, w in enumerate(words[:-1]) if w in ("-o", "--output")}
    return names


def substituted(words: list[str], tiny_model: Path) -> list[str]:
    """Tiny step counts, and README's TINY model."""
    words = [str(tiny_model) if w == "TINY" else w for w in words]
    words = [STEPS if i and words[i - 1] == "--steps" else w for i, w in enumerate(words)]
    command = words[1] if len(words) > 1 else ""
    if command in ("fit", "fit-batch", "apply", "eval") and "--steps" not in words:
        words.append("--steps")
        words.append(STEPS)
    if command in ("fit", "fit-batch") and not {"--init", "--init-text", "--official"} & set(words):
        words += ["--init", "auto"]  # no candidate search (its cost is that of a short fit; tests/test_validation.py)
    if words[1:3] == ["bench", "quality"]:
        words += ["--apply-steps", STEPS]
    return words


def run_invert(line: str, tiny_model: Path, monkeypatch) -> str | None:
    """An `invert ...` line (maybe after VAR=value, maybe piped into a command) in this process; why the rest of
    it could not run, if so."""
    words = shlex.split(line, comments=True)
    while "=" in words[0]:
        name, _, value = words.pop(0).partition("=")
        monkeypatch.setenv(name, value)
    if words[:3] == ["python", "-m", "benchmarks"]:  # the benchmarks' group, run here as `invert bench ...` would be
        words = ["invert", "bench", *words[3:]]
    pipe = words.index("|") if "|" in words else len(words)
    words, after = substituted(words[:pipe], tiny_model), words[pipe + 1:]
    group, args = (bench, words[2:]) if words[1] == "bench" else (cli, words[1:])
    r = CliRunner().invoke(group, args, catch_exceptions=False)
    assert r.exit_code == 0, f"{line}\nran as: {shlex.join(words)}\n{r.output[-3000:]}"
    if after and shutil.which(after[0]) is None:
        return f"{line}: {after[0]} is not installed"
    if after:
        proc = subprocess.run(after, input=r.stdout, capture_output=True, text=True)
        assert proc.returncode == 0 and proc.stdout.strip() not in ("", "null"), f"{line}\n{proc.stderr}"
    return None


def run_shell(line: str, folder: Path) -> str | None:
    """A line for a shell: bash, or the shell it is written for (why not, when it is not installed).
    quickstart.sh runs invert through $INVERT, here a wrapper that makes its step counts tiny."""
    shell = next((s for start, s in SHELLS.items() if line.startswith(start)), "bash")
    if shutil.which(shell) is None:
        return f"{line}: {shell} is not installed"
    wrapper = folder / ".invert"
    wrapper.write_text(f'#!/bin/bash\nargs=() previous=\nfor a in "$@"; do [ "$previous" = --steps ] && a={STEPS}; '
                       f'args+=("$a"); previous=$a; done\nexec {shlex.quote(sys.executable)} -m invert "${{args[@]}}"\n')
    wrapper.chmod(0o755)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", INVERT=str(wrapper),
               OMP_NUM_THREADS="1", INVERT_MODEL="toy", INVERT_DEVICE="cpu")
    proc = subprocess.run([shell, "-c", line], cwd=folder, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{line}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return None


def marks(block: list[str]) -> list[pytest.MarkDecorator]:
    """A block that runs the research benchmarks is a benchmark test (.ci/run runs it after README's command)."""
    runs_bench = any(re.match(r"^(\w+=\S+ )*python -m benchmarks", line) and not skipped(line) for line in block)
    return [pytest.mark.bench] if runs_bench else []


@pytest.mark.parametrize("heading, block", [pytest.param(h, b, id=h, marks=marks(b)) for h, b in BLOCKS])
def test_shell_examples_run_as_written(heading, block, workspace, tiny_model_dir, tmp_path, monkeypatch):
    runnable = [line for line in block if not skipped(line)]
    if not runnable:
        pytest.skip("; ".join(sorted({skipped(line) for line in block})))
    folder = tmp_path / "work"
    made = written_by(block)
    shutil.copytree(workspace, folder, symlinks=True, ignore=lambda d, names: made if Path(d) == workspace else ())
    monkeypatch.chdir(folder)
    for name, value in (("INVERT_MODEL", "toy"), ("INVERT_DEVICE", "cpu")):
        monkeypatch.setenv(name, value)
    not_run = []
    for line in runnable:
        if not any(line.startswith(start) for start in SHELLS) and re.match(r"^(\w+=\S+ )*(invert|python -m benchmarks) ", line):
            not_run.append(run_invert(line, tiny_model_dir, monkeypatch))
        else:
            not_run.append(run_shell(line, folder))
    if any(not_run):
        pytest.skip("the others ran; not run: " + "; ".join(filter(None, not_run)))
