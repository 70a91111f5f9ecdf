"""``invert apply``: edit images with learned instructions (alone, mixed, with text, or from a library)."""
from __future__ import annotations

from pathlib import Path

import click

import invert
from invert.defaults import DEFAULT_TEMPERATURE, NOISE_MODES, SCHEDULERS
from invert.errors import InvertError

from .common import IMAGE_SUFFIXES, check_output, make_folder, user_errors
from .options import model_options


def _inputs(paths: list[Path]) -> list[Path]:
    from invert.pairs import is_image_file

    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if is_image_file(f))
        elif p.is_file():
            files.append(p)
        else:
            raise InvertError(f"{p}: no such file or folder")
    if not files:
        raise InvertError(f"no images found in {', '.join(map(str, paths))}")
    return files


def _weights(mix: str | None) -> list[float] | None:
    if not mix:
        return None
    try:
        return [float(w) for w in mix.split(",")]
    except ValueError:
        raise InvertError(f"--mix {mix!r}: expected comma-separated numbers such as 0.7,0.3") from None


@click.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="Output folder (results keep the input's stem), or an image file for a single input.")
@click.option("--mix", default=None, help="Weights for several .inst files, e.g. 0.7,0.3: a weighted sum of what "
              "they learned (same method and base model).")
@click.option("--library", "library_file", type=click.Path(path_type=Path), default=None,
              help="Edit with an instruction library (invert library build) instead of .inst files: its instructions "
                   "mixed by how well their keys match the CLIP direction of the --before/--after pairs. No fitting.")
@click.option("--before", "befores", multiple=True, type=click.Path(path_type=Path),
              help="--library: an exemplar before image (repeatable; paired in order with --after).")
@click.option("--after", "afters", multiple=True, type=click.Path(path_type=Path),
              help="--library: an exemplar after image.")
@click.option("--temperature", default=DEFAULT_TEMPERATURE, show_default=True, type=float,
              help="--library: softmax temperature over the key cosines; lower mixes fewer instructions.")
@click.option("--top", default=None, type=click.IntRange(min=1), help="--library: mix only the K best matches.")
@click.option("--method", default=None, help="--library: which method's instructions to mix (when it holds several).")
@click.option("--text", default=None, help="Extra instruction text after the learned one (a hybrid instruction).")
@click.option("--steps", default=20, show_default=True, type=click.IntRange(min=1))
@click.option("--guidance", default=None, type=float, help="Text guidance; default: the file's.")
@click.option("--image-guidance", default=None, type=float, help="Image guidance; default: the file's.")
@click.option("--seed", default=0, show_default=True, type=int, help="Noise seed with --fresh-noise.")
@click.option("--fresh-noise", is_flag=True, help="Draw new noise from --seed instead of the fit's stored noise.")
@click.option("--noise", default=None, type=click.Choice(list(NOISE_MODES)),
              help="stream: drawn in order from the fit's seed (the default); fit: the noise the fit drew for each "
                   "timestep, reused (the VISII paper's fixed noise); fresh: from --seed, as diffusers' pipeline "
                   "with that seed's generator.")
@click.option("--scheduler", default=None, type=click.Choice(list(SCHEDULERS)),
              help="Sampler; default: the model's own (Euler ancestral for IP2P).")
@click.option("--strength", default=1.0, show_default=True, type=float,
              help="Scale of the learned change: 0 = the init text, 1 = learned, >1 extrapolates.")
@click.option("--reverse", is_flag=True, help="Undo the edit: the reverse instruction of a fit with --reverse "
              "(a lora instruction's negated adapter).")
@click.option("--resolution", default=None, type=click.IntRange(min=8),
              help="Resize and centre-crop inputs to this square size; default: keep the size (rounded down to 8).")
@click.option("--grid", is_flag=True, help="Also write STEM_grid.png: exemplar pair | input | result.")
@click.option("--allow-model-mismatch", is_flag=True, help="Use an instruction learned on other base weights.")
@click.option("--force", is_flag=True, help="Overwrite existing outputs.")
@click.option("--keep-going", is_flag=True, help="Skip inputs that fail (unreadable, output exists) and edit the "
              "others; list the failures at the end (the exit status is still non-zero).")
@click.option("--batch-size", default=4, show_default=True, type=click.IntRange(min=1),
              help="Images per sampling batch (same-size images only); results do not depend on it (up to one "
                   "level of rounding).")
@click.option("--low-memory", is_flag=True, help="VAE slicing: less memory, slower.")
@model_options(None)
@user_errors
def apply(inputs, output, mix, text, steps, guidance, image_guidance, seed, fresh_noise, noise, scheduler,
          strength, reverse, resolution, grid, allow_model_mismatch, force, keep_going, batch_size, low_memory, model,
          device, dtype, library_file, befores, afters, temperature, top, method):
    """Edit images with a learned instruction: INPUTS are one or more .inst files, then image files or folders.

    \b
      invert apply sketch.inst photo.jpg -o photo_sketch.png
      invert apply sketch.inst photos/ -o out/ --text "at night"
      invert apply sketch.inst photo.jpg -o out/ --fresh-noise --seed 3 --grid
      invert apply a.inst b.inst photo.jpg -o out/ --mix 0.7,0.3
      invert apply sketch.inst result.png -o undone.png --reverse
      invert apply --library lib.safetensors --before a.jpg --after b.jpg photo.jpg -o out/
    """
    from invert.batch import Failures, output_name
    from invert.grid import preview_grid, save_image
    from invert.instruction import Instruction
    from invert.pairs import fit_to_resolution, open_image

    inst_paths = [p for p in inputs if p.suffix == ".inst"]
    images = [p for p in inputs if p.suffix != ".inst"]
    editor = None
    if library_file is not None or befores or afters:
        from .library import instruction_from_library

        editor, insts = instruction_from_library(library_file, inst_paths, images, mix, befores, afters, method,
                                                 temperature, top, model, device, dtype, allow_model_mismatch)
        insts = [insts]
    elif not inst_paths or not images:
        raise InvertError("give one or more .inst files followed by images or folders")
    else:
        insts = [Instruction.load(p) for p in inst_paths]
    weights = _weights(mix)
    files = _inputs(images)
    single_file = output.suffix.lower() in IMAGE_SUFFIXES
    if single_file and len(files) > 1:
        raise InvertError(f"{output}: one output file for {len(files)} images; give a folder")
    targets = [output] if single_file else [output / output_name(f) for f in files]
    if len({t.name.casefold() for t in targets}) != len(targets):  # casefold: macOS and Windows ignore case
        raise InvertError("two inputs share a file stem; their results would overwrite each other")
    if not single_file:
        make_folder(output)
    failures = Failures(keep_going, lambda line: click.echo(line, err=True))
    opened, kept = [], []
    for f, target in zip(files, targets):
        with failures.record():
            check_output(target, force)
            img = open_image(f)
            opened.append(fit_to_resolution(img, resolution) if resolution else img)
            kept.append(target)
    written = 0

    def write(results) -> None:  # each batch as soon as it is done
        nonlocal written
        for img in results:
            src, target = opened[written], kept[written]
            written += 1
            with failures.record():
                save_image(img, target, force)
                click.echo(f"wrote {target}")
                if grid:
                    grid_path = target.with_name(f"{target.stem}_grid.png")
                    save_image(preview_grid(insts[0], src, img), grid_path, force)
                    click.echo(f"wrote {grid_path}")

    if opened:
        invert.apply(insts, opened, weights=weights, editor=editor, model=model,
                     device=device, dtype=dtype, text=text, steps=steps, guidance=guidance,
                     image_guidance=image_guidance, seed=seed, fresh_noise=fresh_noise, noise=noise,
                     scheduler=scheduler,
                     strength=strength, allow_model_mismatch=allow_model_mismatch, batch_size=batch_size,
                     low_memory=low_memory, reverse=reverse, on_images=write)
    summary = failures.summary(len(files))
    if summary:
        raise InvertError(summary)
