"""Every write of every command fails the same way (issue 24, class 3): one line naming the file and the cause, a
non-zero exit, no traceback, the previous file intact and no temporary file left; for a full disk (a file-size
limit, RLIMIT_FSIZE, set in a subprocess), a name past the file system's limit, a read-only folder and a path
through a file."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch
from PIL import Image

from conftest import messages, scene, tiny_fit

HERE = Path(__file__).resolve().parent
OLD = b"the previous file"
NAME_MAX = 255  # bytes in a file name on the file systems tests run on (ext4, tmpfs, APFS, ...)


@dataclass(frozen=True)
class World:
    model: Path
    root: Path
    pairs: Path
    image: Path
    visii: Path  # a visii .inst with a CLIP key (a library can hold it)
    lora: Path
    official: Path  # a prompt embedding saved by VISII's official code


@pytest.fixture(scope="module")
def world(editor, clip, tiny_model_dir, tmp_path_factory) -> World:
    root = tmp_path_factory.mktemp("world")
    befores, afters = [scene(i) for i in range(2)], [scene(i, night=True) for i in range(2)]
    for side, images in (("before", befores), ("after", afters)):
        (root / "pairs" / side).mkdir(parents=True)
        for i, img in enumerate(images):
            img.save(root / "pairs" / side / f"{i}.png")
    scene(7).save(root / "in.png")
    for method in ("visii", "lora"):
        tiny_fit(editor, befores, afters, method, clip=clip, steps=1, init_text="make it night").save(
            root / f"{method}.inst")
    (root / "log" / "exp").mkdir(parents=True)
    enc = editor.encode_text(["make it night", "", ""])
    torch.save(enc.embeds.clone(), root / "log" / "exp" / "prompt_embeds_9.pt")
    (root / "log" / "learned_prompt.txt").write_text("make it night")
    return World(tiny_model_dir, root, root / "pairs", root / "in.png", root / "visii.inst", root / "lora.inst",
                 root / "log" / "exp" / "prompt_embeds_9.pt")


def fit_options(w: World) -> list:
    return ["--model", w.model, "--resolution", 32, "--init-text", "x", "--clip-weight", 0, "--quiet"]


def sets_with(scratch: Path, w: World, name: str) -> Path:
    """A fit-batch SETS folder holding one set named ``name``."""
    shutil.copytree(w.pairs, scratch / "sets" / name)
    return scratch / "sets"


def input_named(scratch: Path, w: World, stem: str) -> Path:
    shutil.copyfile(w.image, scratch / f"{stem}.png")
    return scratch / f"{stem}.png"


@dataclass(frozen=True)
class Writer:
    """One file a command writes: its name from a STEM, the command that writes it into a folder (inputs it needs
    made in ``scratch``), and a stem whose name is past the file system's limit: 300 characters where the user
    names the file, else the shortest that overflows while the names the user gives still fit."""

    target: str
    command: Callable[[World, Path, str, Path], list]
    long_stem: int
    limit: int = 256  # a file-size limit below the size of what it writes (and above what it writes before)
    stop_at: int | None = None  # a SIGTERM at this fit step (so that the fit writes its state)
    primary: str | None = None  # the file the command writes first, in the same folder (its refusal comes first)

    def run(self, run, monkeypatch, w: World, out: Path, stem: str, scratch: Path):
        if self.stop_at is not None:
            from invert.fitting.loop import Trainer

            original = Trainer.step_loss

            def step_loss(trainer, step, scale):
                if step == self.stop_at:
                    os.kill(os.getpid(), signal.SIGTERM)
                return original(trainer, step, scale)

            monkeypatch.setattr(Trainer, "step_loss", step_loss)
        return run(*self.command(w, out, stem, scratch))


WRITERS = {
    "fit: the .inst": Writer("{}.inst", lambda w, out, stem, scratch: [
        "fit", w.pairs, "-o", out / f"{stem}.inst", "--steps", 1, "--force", *fit_options(w)], 295),
    "fit: --save-every's snapshot": Writer("{}.step-1.inst", lambda w, out, stem, scratch: [
        "fit", w.pairs, "-o", out / f"{stem}.inst", "--steps", 2, "--save-every", 1, "--force", *fit_options(w)],
        NAME_MAX - len(".step-1.inst") + 1, primary="{}.inst"),
    "fit: a stopped fit's state": Writer("{}.inst.ckpt", lambda w, out, stem, scratch: [
        "fit", w.pairs, "-o", out / f"{stem}.inst", "--steps", 3, "--force", *fit_options(w)],
        NAME_MAX - len(".inst.ckpt") + 1, stop_at=1, primary="{}.inst"),
    "fit-batch: a set's .inst": Writer("{}.inst", lambda w, out, stem, scratch: [
        "fit-batch", sets_with(scratch, w, stem), "-o", out, "--steps", 1, "--force", *fit_options(w)],
        NAME_MAX - len(".inst") + 1),
    "import-visii": Writer("{}.inst", lambda w, out, stem, scratch: [
        "import-visii", w.official, "-o", out / f"{stem}.inst", "--model", w.model, "--force", "--quiet"], 295),
    "library build": Writer("{}.safetensors", lambda w, out, stem, scratch: [
        "library", "build", w.visii, "-o", out / f"{stem}.safetensors", "--force"], 288),
    "export-lora": Writer("{}.safetensors", lambda w, out, stem, scratch: [
        "export-lora", w.lora, "-o", out / f"{stem}.safetensors", "--force"], 288),
    "export-embeds": Writer("{}.safetensors", lambda w, out, stem, scratch: [
        "export-embeds", w.visii, "-o", out / f"{stem}.safetensors", "--force"], 288),
    "apply: a result": Writer("{}.png", lambda w, out, stem, scratch: [
        "apply", w.visii, w.image, "-o", out / f"{stem}.png", "--steps", 1, "--model", w.model, "--force",
        "--quiet"], 296),
    "apply: a result's --grid": Writer("{}_grid.png", lambda w, out, stem, scratch: [
        "apply", w.visii, input_named(scratch, w, stem), "-o", out, "--grid", "--steps", 1, "--model", w.model,
        "--force", "--quiet"], NAME_MAX - len("_grid.png") + 1, limit=6144, primary="{}.png"),
    "eval: --sheet": Writer("{}.png", lambda w, out, stem, scratch: [
        "eval", w.visii, w.pairs, "--sheet", out / f"{stem}.png", "--no-clip", "--steps", 1, "--model", w.model,
        "--force", "--quiet"], 296),
}


def leftovers(folder: Path, keep: set[str]) -> list[str]:
    """What a failed write left in ``folder`` beyond ``keep``: temporary files, half-written outputs."""
    return sorted(p.name for p in folder.iterdir() if p.name not in keep) if folder.is_dir() else []


def check_failed(exit_code, output: str, targets: list[Path], *causes: str) -> None:
    """A non-zero exit, no traceback, and one line saying that one of ``targets`` cannot be written, with one of
    ``causes``."""
    assert exit_code not in (0, None), output
    assert "Traceback" not in output, output
    named = [line for line in messages(output) if any(f"{t}: cannot write (" in line for t in targets)]
    assert len(named) == 1, output
    assert any(c in named[0] for c in causes), named[0]


def limited(cases: list[dict]) -> list[dict]:
    """Run CLI cases under a file-size limit, in a subprocess (tests/limited_cli.py)."""
    proc = subprocess.run([sys.executable, str(HERE / "limited_cli.py")], input=json.dumps(cases), text=True,
                          capture_output=True, cwd=HERE, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_file_size_limit_fails_every_writer_in_one_line(world, tmp_path):
    """The limit is a full disk as the writers see it (EFBIG, "File too large"): each writer's previous file,
    there before, stays as it was, and nothing else is left."""
    cases, targets = [], []
    for n, (name, writer) in enumerate(WRITERS.items()):
        out, scratch = tmp_path / f"out{n}", tmp_path / f"in{n}"
        out.mkdir(), scratch.mkdir()
        target = out / writer.target.format("edit")
        target.write_bytes(OLD)
        cases.append({"args": [str(a) for a in writer.command(world, out, "edit", scratch)], "limit": writer.limit,
                      "stop_at": writer.stop_at})
        targets.append((name, target))
    for (name, target), result in zip(targets, limited(cases)):
        assert result["escaped"] is None, f"{name}:\n{result['escaped']}"
        check_failed(result["exit_code"], result["output"], [target], "File too large")
        assert target.read_bytes() == OLD, name
        # an apply --grid's result is smaller than the limit (so that the grid is what fails): it is kept
        assert leftovers(target.parent, {target.name, "edit.png"}) == [], name


@pytest.mark.parametrize("name", WRITERS)
def test_a_name_past_the_file_systems_limit_is_one_line(run, monkeypatch, world, tmp_path, name):
    writer = WRITERS[name]
    stem = "n" * writer.long_stem
    target = tmp_path / "out" / writer.target.format(stem)
    assert len(target.name) > NAME_MAX and (len(target.name) == 300 or writer.long_stem < NAME_MAX)
    (tmp_path / "out").mkdir(), (tmp_path / "in").mkdir()
    r = writer.run(run, monkeypatch, world, tmp_path / "out", stem, tmp_path / "in")
    check_failed(r.exit_code, r.output, [target], "File name too long")
    assert leftovers(tmp_path / "out", set()) == []


@contextlib.contextmanager
def read_only(folder: Path):
    """``folder`` read-only: by its mode, or for root (whom modes do not stop) by the immutable attribute."""
    folder.chmod(0o555)
    immutable = False
    try:
        if os.access(folder, os.W_OK):
            immutable = shutil.which("chattr") is not None and subprocess.run(
                ["chattr", "+i", str(folder)], capture_output=True).returncode == 0
            if not immutable:
                pytest.skip("cannot make a read-only folder here (root, and no chattr +i)")
        yield folder
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        folder.chmod(0o755)


@pytest.mark.parametrize("name", WRITERS)
def test_a_read_only_folder_is_one_line_and_keeps_the_old_file(run, monkeypatch, world, tmp_path, name):
    writer = WRITERS[name]
    out, scratch = tmp_path / "out", tmp_path / "in"
    out.mkdir(), scratch.mkdir()
    target = out / writer.target.format("edit")
    target.write_bytes(OLD)
    with read_only(out):
        r = writer.run(run, monkeypatch, world, out, "edit", scratch)
    check_failed(r.exit_code, r.output, [target, out / (writer.primary or writer.target).format("edit")],
                 "not writable", "Permission denied", "Operation not permitted", "Read-only file system")
    assert target.read_bytes() == OLD and leftovers(out, {target.name}) == []


@pytest.mark.parametrize("name", WRITERS)
def test_a_path_through_a_file_is_one_line(run, monkeypatch, world, tmp_path, name):
    writer = WRITERS[name]
    blocker = tmp_path / "notes.txt"
    blocker.write_bytes(OLD)
    (tmp_path / "in").mkdir()
    r = writer.run(run, monkeypatch, world, blocker / "out", "edit", tmp_path / "in")
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    lines = [line for line in messages(r.output) if f"{blocker} is a file, not a folder" in line]
    assert len(lines) == 1, r.output
    assert blocker.read_bytes() == OLD


def test_a_name_just_within_the_limit_is_written(run, world, tmp_path):
    """The temporary file's name is not longer than the limit allows, whatever the target's length."""
    target = tmp_path / ("n" * (NAME_MAX - len(".safetensors")) + ".safetensors")
    r = run("export-embeds", world.visii, "-o", target)
    assert r.exit_code == 0, r.output
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


def test_the_web_apps_writes_are_one_line(world, tmp_path):
    """The app writes its results, uploads, .inst and state files through the same mechanism: an error on the
    page, one line, not an internal error."""
    from invert.errors import InvertError
    from invert.fitting.checkpoint import FitState
    from invert.instruction import Instruction
    from invert.ui.backend import copy_file, save_image, save_instruction, save_state
    from invert.ui.session import Session

    inst = Instruction.load(world.visii)
    state = FitState(1, {"p": torch.zeros(2)}, {"state": {}, "param_groups": []}, [1.0])
    long = "n" * 300
    writes = {"result image": lambda folder: save_image(Image.new("RGB", (8, 8)), folder / f"{long}.png"),
              "upload": lambda folder: copy_file(world.image, folder / f"{long}.png"),
              ".inst": lambda folder: save_instruction(inst, folder / f"{long}.inst"),
              "state": lambda folder: save_state(state, folder / f"{long}.ckpt"),
              "upload folder": lambda folder: Session(folder).copy_uploads([str(world.image)], folder / long)}
    for what, write in writes.items():
        with pytest.raises(InvertError) as caught:
            write(tmp_path)
        assert "File name too long" in str(caught.value) and "\n" not in str(caught.value), what
    locked = tmp_path / "locked"
    locked.mkdir()
    with read_only(locked):
        with pytest.raises(InvertError, match=r"locked/x.png: cannot write \("):
            save_image(Image.new("RGB", (8, 8)), locked / "x.png")
    assert list(locked.iterdir()) == []


def test_an_unwritable_cache_costs_time_not_the_command(clip, tmp_path, monkeypatch):
    """Phrase features are computed again when their cache cannot be written (a warning says so); the CLIP
    tokenizer, which must be built once, is one error naming the folder and saying what to do."""
    from invert.backbones.tokenizer import clip_tokenizer
    from invert.errors import InvertError, InvertWarning
    from invert.fitting.phrases import phrase_features

    blocker = tmp_path / "cache"
    blocker.write_bytes(OLD)  # a file where the cache folder should be
    monkeypatch.setenv("INVERT_CACHE", str(blocker))
    through = r"cannot write \(.*cache is a file, not a folder\)"
    with pytest.warns(InvertWarning, match=rf"phrase features not cached: .*cache/phrase-features/.*: {through}"):
        feats = phrase_features(clip, ["a cat", "a dog"])
    assert feats.shape[0] == 2
    with pytest.raises(InvertError, match=rf"cache/clip-tokenizer: {through}: .* set INVERT_CACHE"):
        clip_tokenizer()
    assert blocker.read_bytes() == OLD
