"""The architecture the project keeps (see ../shared/DESIGN.md): layers point down with no import cycles (the
contracts in pyproject.toml, checked with import-linter), the interfaces sit on top, no code outside
invert/methods/ branches on a method's name and none outside invert/backbones/ on the architecture."""
import ast
import re
import subprocess
import sys
from pathlib import Path

from invert.backbones import BACKBONES, backbone_class
from invert.methods import method_names

ROOT = Path(__file__).resolve().parent.parent


def python_files(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py"))


def test_the_import_contracts_hold():
    proc = subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports_command; "
                           "lint_imports_command()", "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "3 kept, 0 broken" in proc.stdout


def imported_modules(path: Path) -> set[str]:
    """Absolute names of everything ``path`` imports (relative imports resolved against its package)."""
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[0] in ("cli", "ui", "vocab"):  # mapped as invert.cli, invert.ui, invert.vocab
        parts = ["invert", *parts]
    package = parts[:-1] if parts[-1] != "__init__" else parts[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            name = ".".join([*base, node.module] if node.module else base)
            found.add(name)
            found |= {f"{name}.{alias.name}" for alias in node.names}
    return found


def test_nothing_below_the_interfaces_imports_them():
    """invert.cli and invert.ui live in cli/ and ui/, outside the package folder import-linter reads. (invert's
    __main__.py is `python -m invert`, the command itself: an interface.)"""
    for path in python_files("invert", "vocab"):
        if path == ROOT / "invert" / "__main__.py":
            continue
        bad = {m for m in imported_modules(path) if m.split(".")[:2] in (["invert", "cli"], ["invert", "ui"])}
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_the_cli_modules_do_not_import_main():
    """main.py registers every command; a command importing it would be a cycle."""
    for path in python_files("cli"):
        if path.name not in ("main.py", "__main__.py"):
            assert "invert.cli.main" not in imported_modules(path), path.name


def lines_matching(pattern: re.Pattern, paths, outside) -> list[str]:
    """``path:line: text`` of every code line (comments cut) matching ``pattern`` in ``paths``, except in files whose
    path parts ``outside`` accepts (the one place allowed to branch)."""
    found = []
    for path in paths:
        if outside(path.relative_to(ROOT).parts):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line.split("#")[0]):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    return found


NAME = "|".join(method_names())
# A comparison with a method's name, or hasattr() on a method or its class.
BRANCH = re.compile(rf"""(==|!=|\bin)\s*[(\[{{]?\s*["']({NAME})["']|["']({NAME})["']\s*(==|!=)"""
                    r"""|\bhasattr\(\s*(cls|method|learned|m|inst|instruction)\b""")


def test_no_branching_on_a_method_name_outside_the_methods():
    """A method is one file: nothing else asks which method it runs (== "lora", in ("visii", ...),
    hasattr(...) on a method); the loop, sampler, library and CLI call the method's own operations."""
    offenders = lines_matching(BRANCH, python_files("invert", "cli", "ui"),
                               outside=lambda parts: "methods" in parts)
    assert not offenders, "\n".join(offenders)


def test_the_branch_pattern_finds_branches():
    for line in ('if method == "lora":', "if name in ('visii', 'brush'):", 'x = "brush" != kind',
                 "if hasattr(cls, 'set_clip_direction'):"):
        assert BRANCH.search(line), line
    for line in ('method: str = "visii"', 'METHOD = "brush"', 'fit(pairs, "lora", steps=3)',
                 'if hasattr(clip.model, "token_embedding"):'):
        assert not BRANCH.search(line), line


def architecture_names() -> tuple[list[str], list[str]]:
    """What names an architecture: each registered backbone's name and the diffusers pipeline classes it loads;
    and the backbone classes (with their bases in invert.backbones other than the protocol itself)."""
    classes = [backbone_class(name) for name in BACKBONES]
    names = [*BACKBONES, *(p for cls in classes for p in cls.pipeline_classes)]
    kinds = {c.__name__ for cls in classes for c in cls.__mro__[:-1]
             if c.__module__.startswith("invert.backbones.") and c.__name__ != "Editor"}
    return names, sorted(kinds)


ARCH_NAMES, ARCH_CLASSES = architecture_names()
# A comparison with a backbone's or a pipeline class's name; isinstance/issubclass on a backbone class or on a
# diffusers pipeline or denoiser class; a comparison of a class's name; hasattr() on an editor, a pipeline or a
# denoiser (asking what it has is asking which it is).
ARCH_BRANCH = re.compile(
    rf"""(==|!=|\bin)\s*[(\[{{]?\s*["']({"|".join(map(re.escape, ARCH_NAMES))})["']"""
    rf"""|["']({"|".join(map(re.escape, ARCH_NAMES))})["']\s*(==|!=)"""
    rf"""|\b(isinstance|issubclass)\([^)]*\b({"|".join(ARCH_CLASSES)}|\w+Pipeline|\w+2DModel|\w+ConditionModel)\b"""
    r"""|(\btype\([^)]*\)|__class__)\.__name__\s*(==|!=|\bin\b)"""
    r"""|\bhasattr\(\s*(self\.)?(editor|pipe|denoiser|unet|transformer|backbone)\b""")


def test_no_branching_on_the_architecture_outside_the_backbones():
    """A backbone is one module: nothing else asks which architecture runs (== "sdxl-ip2p", isinstance(editor,
    FluxEditor), type(pipe).__name__ == ..., hasattr(editor.denoiser, ...)); what differs is a protocol attribute or
    method of the backbone. The benchmarks too: they measure every registered backbone through the protocol."""
    offenders = lines_matching(ARCH_BRANCH, python_files("invert", "cli", "ui", "benchmarks"),
                               outside=lambda parts: parts[:2] == ("invert", "backbones"))
    assert not offenders, "\n".join(offenders)


def test_the_architecture_pattern_finds_branches():
    assert {"ip2p", "sdxl-ip2p", "flux2-klein", "flux1-kontext", "FluxKontextPipeline"} <= set(ARCH_NAMES)
    assert {"InstructPix2Pix", "SDXLInstructPix2Pix", "FluxEditor", "Flux2Klein", "FluxKontext"} <= set(ARCH_CLASSES)
    for line in ('if editor.name == "sdxl-ip2p":', "if meta.backbone in ('flux2-klein', 'flux1-kontext'):",
                 'x = "ip2p" != backbone', "if isinstance(editor, FluxEditor):",
                 "if issubclass(cls, (InstructPix2Pix, Flux2Klein)):",
                 "if isinstance(pipe, StableDiffusionXLInstructPix2PixPipeline):",
                 "if isinstance(editor.denoiser, UNet2DConditionModel):",
                 'if type(pipe).__name__ == "FluxKontextPipeline":',
                 "if pipe.__class__.__name__ in names:", 'if hasattr(editor.denoiser, "add_k_proj"):',
                 "if hasattr(self.pipe, 'text_encoder_2'):"):
        assert ARCH_BRANCH.search(line), line
    for line in ('backbone: str = "ip2p"', 'load_editor("random:sdxl-instructpix2pix")', 'if recorded != editor.name:',
                 "cls = backbone_for_pipeline(type(pipe).__name__, 'pipe')", "if isinstance(clip, OpenClip):",
                 'if hasattr(clip.model, "token_embedding"):'):
        assert not ARCH_BRANCH.search(line), line


PIPELINE_ARGUMENTS = ("prompt_embeds", "pooled_prompt_embeds", "guidance_scale", "image_guidance_scale")


def spelled_pipeline_arguments(source: str) -> list[int]:
    """Lines that spell a diffusers pipeline call's argument: a keyword argument or a string of that name (a dict
    key), or ``name=`` inside a string (a call shown to the user). Docstrings may show calls."""
    tree = ast.parse(source)
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    shown = re.compile(rf"(?<![\w.])({'|'.join(PIPELINE_ARGUMENTS)})=")
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg in PIPELINE_ARGUMENTS:
            lines.append(node.value.lineno)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings \
                and (node.value in PIPELINE_ARGUMENTS or shown.search(node.value)):
            lines.append(node.lineno)
    return lines


def test_the_pipeline_call_is_spelled_by_the_backbones():
    """What a diffusers pipeline call takes for an instruction (prompt_embeds, the pooled vector of SDXL and
    Kontext, the guidance scales a pipeline has) is the backbone's (Editor.pipeline_arguments and
    pipeline_guidance): installed(), the exports and the CLI's hints take it from there."""
    offenders = [f"{path.relative_to(ROOT)}:{number}" for path in python_files("invert", "cli", "ui")
                 if path.relative_to(ROOT).parts[:2] != ("invert", "backbones")
                 for number in spelled_pipeline_arguments(path.read_text())]
    assert not offenders, offenders


def test_the_pipeline_argument_rule_finds_spellings():
    found = spelled_pipeline_arguments('def f(pipe, e, p):\n    """pipe(prompt_embeds=e)"""\n'
                                       '    pipe(prompt_embeds=e)\n    d = {"pooled_prompt_embeds": p}\n'
                                       '    print(f"pipe(image=..., image_guidance_scale={p})")\n'
                                       '    fmt = "invert.prompt_embeds"\n    x = read_prompt_embeds(e)\n')
    assert found == [3, 4, 5]
