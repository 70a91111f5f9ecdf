"""``invert library``: build and inspect instruction libraries (``invert apply --library`` uses them)."""
from __future__ import annotations

from pathlib import Path

import click

from invert.display import printable

from .common import check_output, json_text, user_errors


@click.group("library")
def library():
    """Instruction libraries: many fitted instructions in one file, each keyed by its exemplars' CLIP direction,
    for editing a new pair without fitting (invert apply --library).

    \b
      invert library build insts/ -o lib.safetensors
      invert library inspect lib.safetensors
      invert apply --library lib.safetensors --before a.jpg --after b.jpg photo.jpg -o out/
    """


@library.command()
@click.argument("insts", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="The library file to write.")
@click.option("--force", is_flag=True, help="Overwrite OUTPUT if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@user_errors
def build(insts, output, force, as_json):
    """Build a library from INSTS: .inst files, or folders of them (what invert fit-batch writes).

    Every instruction needs its CLIP direction (stored by any fit with a CLIP model) and all must share one base
    model and one CLIP model. Names are the file stems.

    \b
      invert library build insts/ -o lib.safetensors
      invert library build night.inst sepia.inst more/ -o lib.safetensors --force
    """
    from invert.library import build_library

    check_output(output, force)
    lib = build_library(insts)
    lib.save(output, force)
    if as_json:
        click.echo(json_text({"output": str(output), "methods": lib.methods, "base_model": lib.base_model,
                               "clip_model": lib.clip_model, "instructions": [_row(e) for e in lib.entries]}, indent=2))
        return
    counts = ", ".join(f"{n} {printable(m)}" for m, n in lib.methods.items())
    click.echo(f"wrote {output}: {len(lib.entries)} instructions ({counts}), base model {printable(lib.base_model)}")


@library.command()
@click.argument("library_file", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object, with every pairwise key cosine.")
@user_errors
def inspect(library_file, as_json):
    """List a library's instructions (name, method, token count, init text) and, for each, the instructions
    whose keys are closest to its own: edits that look alike to CLIP get mixed together.

    \b
      invert library inspect lib.safetensors
      invert library inspect lib.safetensors --json | jq .key_cosines.night
    """
    from invert.library import Library

    lib = Library.load(library_file)
    cos = lib.key_cosines()
    names = [e.name for e in lib.entries]
    if as_json:
        click.echo(json_text({"file": str(library_file), "methods": lib.methods, "base_model": lib.base_model,
                               "clip_model": lib.clip_model, "instructions": [_row(e) for e in lib.entries],
                               "key_cosines": {a: {b: round(float(cos[i, j]), 4) for j, b in enumerate(names)}
                                               for i, a in enumerate(names)}}, indent=2))
        return
    # Names, methods, model ids and init texts come from the file: control characters in them are shown escaped.
    click.echo(f"{library_file}: {len(names)} instructions, base model {printable(lib.base_model)}, CLIP "
               f"{printable(lib.clip_model)}")
    shown = [printable(n) for n in names]
    width = max(map(len, shown))
    click.echo(f"{'name':{width}s} {'method':7s} {'tokens':>6s}  {'closest keys (cosine)':40s}  init text")
    for i, e in enumerate(lib.entries):
        others = [j for j in cos[i].argsort(descending=True).tolist() if j != i][:3]
        closest = ", ".join(f"{shown[j]} {float(cos[i, j]):.2f}" for j in others)
        row = _row(e)
        click.echo(f"{shown[i]:{width}s} {printable(e.method):7s} {printable(row['tokens']):>6}  {closest:40s}  "
                   f"{row['init_text']!r}")


def _row(entry) -> dict:
    meta = entry.instruction.meta
    return {"name": entry.name, "method": entry.method, "tokens": meta.num_tokens, "init_text": meta.init_text,
            "steps": meta.steps}


def instruction_from_library(library_file, inst_paths, images, mix, befores, afters, method, temperature, best, model,
                             device, dtype, allow_model_mismatch):
    """``invert apply --library``: the library's mix for the --before/--after pairs, and the editor it loaded.
    Prints the chosen weights, one line per instruction, to stderr (stdout lists the files written)."""
    import invert
    from invert.backbones import load_editor
    from invert.backbones.model_info import recorded_model
    from invert.errors import InvertError
    from invert.library import Library
    from invert.pairs import load_pairs

    if library_file is None:
        raise InvertError("--before/--after pick instructions from a library: give --library too")
    if inst_paths or mix:
        raise InvertError("give either .inst files (and --mix) or --library, not both")
    if not images:
        raise InvertError("give the images or folders to edit")
    if not befores or len(befores) != len(afters):
        raise InvertError(f"--library needs exemplar pairs: as many --before as --after images (got {len(befores)} "
                          f"and {len(afters)})")
    lib = Library.load(library_file)
    pairs = [invert.find_pairs(before=b, after=a)[0] for b, a in zip(befores, afters)]
    editor = load_editor(model or recorded_model(lib.base_model, library_file), device, dtype)
    inst, chosen, weights = lib.instruction_for(*load_pairs(pairs, lib.exemplar_size(editor)), editor=editor, method=method,
                                                temperature=temperature, top=best,
                                                allow_model_mismatch=allow_model_mismatch)
    click.echo(f"{library_file}: {len(chosen)} {printable(chosen[0].method)} instructions mixed (temperature "
               f"{temperature:g}):", err=True)
    for e, w in zip(chosen, weights):
        click.echo(f"  {w:.4f}  {printable(e.name)}", err=True)
    return editor, inst
