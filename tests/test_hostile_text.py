"""Text read from files reaches the terminal with its control characters escaped (issue 24, class 4): an .inst's
metadata (init text, model ids, key and tensor names), a library's entry names, the names of pair, input and set
files, vocabulary phrases, config keys, in every command's human output, errors and warnings (--json escapes them
as JSON does); and the web app shows them as text, not Markdown or HTML."""
from __future__ import annotations

import json
import os
import shutil
import unicodedata
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import pytest
import torch
from PIL import Image

from conftest import scene, tiny_fit

# What a hostile file could hold: a terminal-title sequence, a screen clear, a colour, a carriage return and a
# backspace to overwrite the line, a NUL, a bidi override, a line separator, and newlines forging lines of output.
HOSTILE = "\x1b]0;pwned\x07\x1b[2J\x1b[1;31m\rError: forged\b\x00\u202eevil\u2028\nError: second line"
# The same in a file name (which cannot hold NUL or '/'), with a byte that is not UTF-8 (a surrogate in Python).
NAME = "n\x1b]0;pwned\x07\x1b[2J\rError: forged\b\u202e\nError: second line" + os.fsdecode(b"\xff")
SHOWN = ("\\x1b]0;pwned", "\\u001b]0;pwned")  # the escape as printed, and as JSON writes it
HIDDEN = {"Cc", "Cf", "Cs", "Zl", "Zp"}


def hidden(text: str) -> list[str]:
    """The control, format, surrogate and separator characters of ``text`` (line breaks aside)."""
    return [f"U+{ord(c):04X}" for c in text if c != "\n" and unicodedata.category(c) in HIDDEN]


def check_escaped(output: str) -> None:
    """Nothing hidden reaches the terminal, no line is forged, and the hostile text was shown (escaped)."""
    assert "Traceback" not in output, output
    assert hidden(output) == [], output
    lines = output.splitlines()
    assert not any(line.lstrip().startswith(("Error: forged", "Error: second line")) for line in lines), output
    assert any(s in output for s in SHOWN), output


@dataclass(frozen=True)
class Files:
    model: Path
    root: Path
    inst: Path  # metadata, a metadata key and a tensor name all hostile
    insts: Path  # a folder holding one instruction under a hostile file name, its base model id hostile
    library: Path  # a library of it: its entry named by the hostile file stem
    pairs: Path  # pairs whose names are hostile
    image: Path
    lora: Path  # a lora instruction whose init text is hostile


@pytest.fixture(scope="module")
def files(editor, clip, tiny_model_dir, tmp_path_factory) -> Files:
    from invert.instruction import Instruction
    from invert.library import build_library

    root = tmp_path_factory.mktemp("hostile")
    befores, afters = [scene(i) for i in range(2)], [scene(i, night=True) for i in range(2)]
    inst = tiny_fit(editor, befores, afters, "visii", clip=clip, steps=1, init_text="make it night")
    (root / "insts").mkdir()
    inst.meta = replace(inst.meta, init_text=HOSTILE, base_model=HOSTILE)
    inst.save(root / "insts" / f"{NAME}.inst")
    build_library([root / "insts"]).save(root / "lib.safetensors")
    # (a key the metadata does not know is never read, so never shown: a hostile text can only be a value)
    inst.meta = replace(inst.meta, clip_model=HOSTILE, fit_check=HOSTILE)
    inst.tensors[HOSTILE] = torch.zeros(1)
    inst.save(root / "hostile.inst")
    Instruction.load(root / "hostile.inst")  # it is a valid file: only its text is hostile
    for side, images in (("before", befores), ("after", afters)):
        (root / "pairs" / side).mkdir(parents=True)
        for i, img in enumerate(images):
            img.save(root / "pairs" / side / f"{NAME}{i}.png")
    scene(7).save(root / "in.png")
    lora = tiny_fit(editor, befores, afters, "lora", steps=1, init_text="x")
    lora.meta = replace(lora.meta, init_text=HOSTILE)
    lora.save(root / "lora.inst")
    return Files(tiny_model_dir, root, root / "hostile.inst", root / "insts", root / "lib.safetensors",
                 root / "pairs", root / "in.png", root / "lora.inst")


def damaged_set(f: Files, scratch: Path) -> Path:
    """A fit-batch SETS folder with a set named NAME whose after image is damaged (the set fails, by name)."""
    shutil.copytree(f.pairs, scratch / "sets" / NAME)
    next((scratch / "sets" / NAME / "after").iterdir()).write_bytes(b"not an image")
    return scratch / "sets"


def inputs_folder(f: Files, scratch: Path) -> Path:
    """Images to edit named NAME, and a damaged one (its failure names it)."""
    (scratch / "images").mkdir()
    shutil.copyfile(f.image, scratch / "images" / f"{NAME}.png")
    (scratch / "images" / f"{NAME}-bad.png").write_bytes(b"not an image")
    return scratch / "images"


def animated_pair(f: Files, scratch: Path) -> Path:
    """A pair named NAME whose before image is animated: fit warns about it, naming the file."""
    (scratch / "anim" / "before").mkdir(parents=True), (scratch / "anim" / "after").mkdir()
    frames = [Image.new("RGB", (32, 32), c) for c in ((250, 0, 0), (0, 250, 0))]
    frames[0].save(scratch / "anim" / "before" / f"{NAME}.gif", save_all=True, append_images=frames[1:])
    scene(1).save(scratch / "anim" / "after" / f"{NAME}.png")
    return scratch / "anim"


def vocabulary(scratch: Path) -> Path:
    lines = [HOSTILE.replace("\n", " ").replace("\u2028", " ") + f" {i}" for i in range(3)]
    (scratch / "vocab.txt").write_text("\n".join(lines), encoding="utf-8")
    return scratch / "vocab.txt"


def config(scratch: Path) -> Path:
    (scratch / "fit.toml").write_text('"\\u001b]0;pwned\\u0007steps" = 1\n', encoding="utf-8")
    return scratch / "fit.toml"


def visii_run(scratch: Path) -> Path:
    """A VISII run's files whose learned_prompt.txt is hostile."""
    (scratch / "log" / "exp").mkdir(parents=True)
    torch.save(torch.zeros(3, 77, 32), scratch / "log" / "exp" / "prompt_embeds_9.pt")
    (scratch / "log" / "learned_prompt.txt").write_text(HOSTILE, encoding="utf-8")
    return scratch / "log" / "exp" / "prompt_embeds_9.pt"


FIT = ["--resolution", 32, "--init-text", "x", "--clip-weight", 0, "--quiet"]
# command -> the arguments that make it print text from a file (given the files and a scratch folder)
COMMANDS: dict[str, Callable[[Files, Path], list]] = {
    "inspect": lambda f, s: ["inspect", f.inst],
    "inspect --json": lambda f, s: ["inspect", f.inst, "--json"],
    "library build": lambda f, s: ["library", "build", f.insts, "-o", s / "lib.safetensors"],
    "library build --json": lambda f, s: ["library", "build", f.insts, "-o", s / "lib.safetensors", "--json"],
    "library inspect": lambda f, s: ["library", "inspect", f.library],
    "library inspect --json": lambda f, s: ["library", "inspect", f.library, "--json"],
    "apply --library": lambda f, s: ["apply", "--library", f.library, "--before", f.image, "--after", f.image,
                                     f.image, "-o", s / "out", "--steps", 1, "--model", f.model, "--quiet"],
    "apply: input names": lambda f, s: ["apply", f.inst, inputs_folder(f, s), "-o", s / "out", "--steps", 1,
                                        "--model", f.model, "--keep-going", "--quiet"],
    "apply: the .inst's model id": lambda f, s: ["apply", f.inst, f.image, "-o", s / "out"],
    "eval": lambda f, s: ["eval", f.inst, f.pairs, "--no-clip", "--steps", 1, "--model", f.model, "--quiet"],
    "eval --csv": lambda f, s: ["eval", f.inst, f.pairs, "--no-clip", "--steps", 1, "--model", f.model, "--csv",
                                "--quiet"],
    "eval --json": lambda f, s: ["eval", f.inst, f.pairs, "--no-clip", "--steps", 1, "--model", f.model, "--json",
                                 "--quiet"],
    "fit-batch": lambda f, s: ["fit-batch", damaged_set(f, s), "-o", s / "out", "--model", f.model, "--steps", 1,
                               *FIT],
    "fit-batch --json": lambda f, s: ["fit-batch", damaged_set(f, s), "-o", s / "out", "--model", f.model,
                                      "--steps", 1, "--json", *FIT],
    "fit: a warning names a pair": lambda f, s: ["fit", animated_pair(f, s), "-o", s / "x.inst", "--model", f.model,
                                                 "--steps", 0, *FIT],
    "fit: an error names a pair": lambda f, s: ["fit", damaged_set(f, s) / NAME, "-o", s / "x.inst", "--model",
                                                f.model, "--steps", 1, *FIT],
    "fit --config": lambda f, s: ["fit", f.pairs, "-o", s / "x.inst", "--model", f.model, "--config", config(s)],
    "phrases": lambda f, s: ["phrases", f.pairs, "--vocab", vocabulary(s), "--model", f.model, "--resolution", 32,
                             "--phrases-threshold", 0],
    "phrases --json": lambda f, s: ["phrases", f.pairs, "--vocab", vocabulary(s), "--model", f.model,
                                    "--resolution", 32, "--phrases-threshold", 0, "--json"],
    "export-lora": lambda f, s: ["export-lora", f.lora, "-o", s / "e.safetensors"],
    "import-visii": lambda f, s: ["import-visii", visii_run(s), "-o", s / "v.inst", "--model", f.model],
}


@pytest.mark.parametrize("name", COMMANDS)
def test_text_from_files_is_shown_escaped(run, files, tmp_path, name):
    r = run(*COMMANDS[name](files, tmp_path))
    check_escaped(r.output)
    if name.endswith("--json") and r.exit_code == 0:
        json.loads(r.stdout)  # still one JSON object, its strings escaped by JSON itself


def test_library_errors_escape_the_text_they_quote():
    """An InvertError (and a warning) is one line whatever text it quotes: the CLI, the web app and Python callers
    all see the escapes."""
    from invert.display import printable
    from invert.errors import InstructionFileError, InvertError, InvertWarning

    for error in (InvertError(f"{NAME}: not an image"), InstructionFileError(HOSTILE), InvertWarning(HOSTILE)):
        assert hidden(str(error)) == [] and "\n" not in str(error)
        assert str(error) == printable(error.args[0])
    assert printable("a plain name, é 夜 ok") == "a plain name, é 夜 ok"  # letters of any script stay as they are


def test_the_web_app_shows_file_text_as_text():
    """Names reach the page's Markdown and HTML literally: no control character, no link, no markup."""
    pytest.importorskip("gradio", reason="the ui extra is not installed (pip install 'invert[ui]')")
    from invert.ui.app import markdown_text

    name = "[click](http://example.com) **bold** <b>x</b> `code` ![i](x.png) #title " + HOSTILE
    shown = markdown_text(name)
    assert hidden(shown) == []
    for markup in ("[click](", "**bold**", "<b>", "`code`", "![i]", "http://"):
        assert markup not in shown, markup
