"""``invert apply``: edit images with learned instructions (alone, mixed, with text, or from a library)."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import click

import invert
from invert.defaults import BEST_LIMITS, DEFAULT_TEMPERATURE, TEMPERATURE_LIMITS
from invert.errors import InvertError
from invert.settings import ApplySettings, build_settings
from invert.settings.apply import BATCH_SIZE, BATCH_SIZE_LIMITS, MAX_VARIATIONS, MIX_WEIGHT, with_fresh_noise_flag
from invert.settings.fields import check_value, flag
from invert.settings.limits import MAX_RESOLUTION, MIN_RESOLUTION
from invert.writing import make_folder, output_exists

from .common import quiet_option, user_errors
from .numbers import number_option
from .options import apply_settings_options, fresh_noise_option, model_options
from .progress import sampling

if TYPE_CHECKING:
    from PIL import Image

SAME = "same"  # an output made with this run's settings: skipped, or (with its grid missing) made again


@dataclass
class Job:
    """One result to make: an input, the seed of its noise, where it goes and how it is made."""

    source: Path
    seed: int | None  # None: the fit's own noise
    target: Path
    grid: Path | None
    prompt: str
    values: dict
    image: Image.Image | None = None  # the opened input, once it is to be made


def _split_inputs(inputs: tuple[Path, ...]) -> tuple[list[Path], list[Path]]:
    """.inst files (known by their content, whatever their name) and the images or folders to edit."""
    from invert.instruction import is_instruction_file

    insts = [p for p in inputs if p.suffix == ".inst" or (p.is_file() and is_instruction_file(p))]
    return insts, [p for p in inputs if p not in insts]


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
    """--mix's weights, checked before any work."""
    if not mix:
        return None
    try:
        weights = [float(w) for w in mix.split(",")]
    except ValueError:
        raise InvertError(f"--mix {mix!r}: expected comma-separated numbers such as 0.7,0.3") from None
    return [check_value(w, float, MIX_WEIGHT, "--mix") for w in weights]


def _state(path: Path, wanted: str) -> str | None:
    """None for an output still to make; SAME for one this run's settings made; else why it is in the way."""
    from .parameters import differences, read_parameters

    if not output_exists(path):  # a name past the file system's limit fails here, before any sampling
        return None
    stored = read_parameters(path)
    if stored is None:
        return f"{path}: already exists (use --force to overwrite)"
    differ = differences(stored, wanted)
    if differ:
        return f"{path}: made with other settings ({'; '.join(differ)}); use --force to overwrite"
    return SAME


@click.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="Output folder (results keep the input's stem), or an image file for a single input.")
@click.option("--mix", default=None, help="Weights for several .inst files of one method and base model, e.g. "
              "0.7,0.3: each file's learned change (from its init) times its weight, added to a base, their inits "
              "averaged by |weight|; what no file learned stays at that base. Weights summing to 1 interpolate "
              "(copies of one file give that file; 1,0 the first); another total scales the combined change as "
              "--strength does (0.7,0 is the first file at strength 0.7; 1,1 of one file twice, strength 2). "
              "One file: its weight is its strength.")
@click.option("--library", "library_file", type=click.Path(path_type=Path), default=None,
              help="Edit with an instruction library (invert library build) instead of .inst files: its instructions "
                   "mixed by how well their keys match the CLIP direction of the --before/--after pairs. No fitting.")
@click.option("--before", "befores", multiple=True, type=click.Path(path_type=Path),
              help="--library: an exemplar before image (repeatable; paired in order with --after).")
@click.option("--after", "afters", multiple=True, type=click.Path(path_type=Path),
              help="--library: an exemplar after image.")
@number_option("--temperature", kind=float, **TEMPERATURE_LIMITS, default=DEFAULT_TEMPERATURE, show_default=True,
               help="--library: softmax temperature over the key cosines; lower mixes fewer instructions.")
@number_option("--best", kind=int, **BEST_LIMITS, default=None,
              help="--library: mix only the K instructions whose keys match best (default: all).")
@click.option("--method", default=None, help="--library: which method's instructions to mix (when it holds several).")
@apply_settings_options
@fresh_noise_option
@number_option("--num-variations", kind=int, minimum=1, maximum=MAX_VARIATIONS, default=1, show_default=True,
               help="Results per input, from seeds SEED, SEED+1, ... (fresh noise), written as STEM_seedS.png.")
@number_option("--resolution", kind=int, minimum=MIN_RESOLUTION, maximum=MAX_RESOLUTION, default=None,
               help="Resize and centre-crop inputs to this square size; default: keep the size (rounded down to 8).")
@click.option("--grid", is_flag=True, help="Also write STEM_grid.png: exemplar pair | input | result, titled.")
@click.option("--allow-model-mismatch", is_flag=True, help="Use an instruction learned on other base weights.")
@click.option("--force", is_flag=True, help="Overwrite existing outputs (without it, those made with the same "
              "settings are skipped and others refused).")
@click.option("--keep-going", is_flag=True, help="Skip inputs that fail (unreadable, output in the way) and edit "
              "the others; list the failures at the end (the exit status is still non-zero).")
@number_option("--batch-size", kind=int, **BATCH_SIZE_LIMITS, default=BATCH_SIZE, show_default=True,
              help="Images per sampling batch (same-size images only); results do not depend on it (up to one "
                   "level of rounding).")
@click.option("--low-memory", is_flag=True, help="VAE slicing and (FLUX) the text encoders on the host "
              "between encodings: less memory, slower.")
@quiet_option
@model_options(None)
@user_errors
def apply(inputs, output, mix, fresh_noise, num_variations, resolution, grid, allow_model_mismatch, force,
          keep_going, batch_size, low_memory, quiet, model, device, dtype, library_file, befores, afters, temperature,
          best, method, **values):
    """Edit images with a learned instruction: INPUTS are one or more .inst files, then image files or folders.

    Each result is written as soon as its batch is done, with how it was made in its metadata (A1111's
    'parameters'). A re-run skips the results made with the same settings and refuses others (--force
    overwrites). Ctrl-C or SIGTERM stops after the current sampling step and keeps the results done.

    \b
      invert apply sketch.inst photo.jpg -o photo_sketch.png
      invert apply sketch.inst photos/ -o out/ --text "at night"
      invert apply sketch.inst photo.jpg -o variations/ --seed 3 --num-variations 4 --grid
      invert apply a.inst b.inst photo.jpg -o mixed/ --mix 0.7,0.3
      invert apply sketch.inst result.png -o undone.png --reverse
      invert apply --library lib.safetensors --before a.jpg --after b.jpg photo.jpg -o out/
    """
    from invert.backbones.model_info import recorded_model
    from invert.instruction import Instruction
    from invert.pairs import fit_to_resolution, open_image

    from .batch import Failures

    values["noise"] = with_fresh_noise_flag(values["noise"], fresh_noise)
    settings, weights = build_settings(ApplySettings, values, flag), _weights(mix)
    inst_paths, images = _split_inputs(inputs)
    editor = None
    if library_file is not None or befores or afters:
        from .library import instruction_from_library

        editor, inst = instruction_from_library(library_file, inst_paths, images, mix, befores, afters, method,
                                                temperature, best, model, device, dtype, allow_model_mismatch)
        insts, sources = [inst], [library_file, *befores, *afters]
    elif not inst_paths or not images:
        raise InvertError("give one or more .inst files followed by images or folders")
    else:
        insts, sources = [Instruction.load(p) for p in inst_paths], inst_paths
    options = dict(weights=weights, batch_size=batch_size, low_memory=low_memory,
                   allow_model_mismatch=allow_model_mismatch)
    fit_seed = insts[0].meta.noise_seed
    noise = settings.noise_mode(num_variations)
    seeds = settings.seeds(fit_seed, num_variations) if noise == "fresh" else [None]
    common = _parameters(insts[0], sources, settings, noise, mix=mix, resolution=resolution, model=model,
                         library=library_file, temperature=temperature, best=best)
    jobs = _plan(_inputs(images), seeds, output, grid, settings.text or "", common, fit_seed)
    failures = Failures(keep_going, lambda line: click.echo(line, err=True))
    todo, skipped = [], 0
    hashes: dict[Path, str] = {}
    for job in jobs:
        with failures.record():
            # the input's content, not only its name: a rerun on another image of that name makes its result again
            if job.source not in hashes:
                hashes[job.source] = _file_hash(job.source)
            job.values["Input hash"] = hashes[job.source]
            states = [_state(path, _text(job)) for path in (job.target, job.grid) if path is not None]
            in_the_way = [s for s in states if s not in (None, SAME)]
            if in_the_way and not force:
                raise InvertError(in_the_way[0])
            if set(states) == {SAME} and not force:
                skipped += 1
                continue
            img = open_image(job.source)
            job.image = fit_to_resolution(img, resolution) if resolution else img
            todo.append(job)
    if skipped:
        click.echo(f"skipped {skipped} result{'s' * (skipped > 1)} made with these settings before "
                   "(--force makes them again)", err=True)
    if todo:
        editor = editor or invert.load_editor(
            model or recorded_model(insts[0].meta.base_model, insts[0].path), device, dtype)
        stopped = _run(todo, insts, editor, settings, options, quiet, failures)
        if stopped is not None:
            raise stopped
    summary = failures.summary(len(jobs))
    if summary:  # one line per failure (an InvertError's message is one line: it would escape their breaks)
        raise click.ClickException(summary)


def _parameters(inst, sources: list[Path], settings: ApplySettings, noise: str, **recorded) -> dict:
    """What every result of the run records of how it was made (A1111's names where it has them)."""
    import hashlib

    from invert.backbones.model_info import local_folder
    from invert.pairs import file_sha256

    guidance, image_guidance = settings.guidance_for(inst.meta.guidance)
    library = recorded["library"]
    return {"Steps": settings.steps, "Sampler": settings.scheduler or "model's",
            "CFG scale": guidance, "Image CFG scale": image_guidance,
            "Seed": None, "Input": None, "Input hash": None,  # each result's own (see _plan); here for their place
            "Noise": noise,
            "Strength": settings.strength, "Reverse": "yes" if settings.reverse else None, "Mix": recorded["mix"],
            "Resolution": recorded["resolution"],
            "Model": local_folder(recorded["model"]) if recorded["model"] else inst.meta.base_model,
            "Method": inst.method,
            "Instruction": f"{library.name} (library)" if library else ", ".join(p.name for p in sources),
            # the library's choice of instructions and their weights
            "Temperature": recorded["temperature"] if library else None, "Best": recorded["best"] if library else None,
            # the files the instruction comes from (for a library, with the exemplars that chose its mix)
            "Instruction hash": hashlib.sha256("".join(map(file_sha256, sources)).encode()).hexdigest()[:12],
            "invert": invert.__version__}


def _file_hash(path: Path) -> str:
    from invert.pairs import file_sha256

    try:
        return file_sha256(path)[:12]
    except OSError as exc:
        raise InvertError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _plan(files: list[Path], seeds: list[int | None], output: Path, grid: bool, prompt: str, common: dict,
          fit_seed: int) -> list[Job]:
    """Every result of the run, one per input and seed, with where it goes and what it records."""
    from invert.pairs import IMAGE_EXTENSIONS, check_distinct_outputs

    from .batch import output_name

    single_file = output.suffix.lower() in IMAGE_EXTENSIONS
    if single_file and len(files) > 1:
        raise InvertError(f"{output}: one output file for {len(files)} images; give a folder")
    make_folder(output.parent, output) if single_file else make_folder(output)
    jobs = []
    for f in files:
        for s in seeds:
            target = output if single_file else output / output_name(f)
            if len(seeds) > 1:
                target = target.with_name(f"{target.stem}_seed{s}{target.suffix}")
            values = {**common, "Seed": fit_seed if s is None else s, "Input": f.name}
            jobs.append(Job(f, s, target, target.with_name(f"{target.stem}_grid.png") if grid else None, prompt,
                            values))
    check_distinct_outputs([p.name for j in jobs for p in (j.target, j.grid) if p is not None])
    return jobs


def _text(job: Job, size: tuple[int, int] | None = None) -> str:
    from .parameters import format_parameters

    return format_parameters(job.prompt, {**job.values, **({"Size": f"{size[0]}x{size[1]}"} if size else {})})


def _run(todo: list[Job], insts, editor, settings: ApplySettings, options: dict, quiet: bool, failures
         ) -> click.ClickException | None:
    """Make the results, each seed's with one ``invert.apply``, each batch written as soon as it is done. Returns
    the error to end with when a signal stopped the run, else None."""
    from invert.api import same_size_batches

    from .grid import preview_grid, save_image

    by_seed: dict[int | None, list[Job]] = {}
    for job in todo:
        by_seed.setdefault(job.seed, []).append(job)
    sizes = [len(b) for jobs in by_seed.values()
             for b in same_size_batches([j.image for j in jobs], options["batch_size"])]
    with sampling(sizes, settings.steps, quiet, "apply") as progress:
        for seed, jobs in by_seed.items():
            pending = iter(jobs)

            def write(results) -> None:
                for img in results:
                    job = next(pending)
                    with failures.record():
                        parameters = _text(job, img.size)
                        # force: an output in the way was refused before any work, so one here is ours (or --force)
                        save_image(img, job.target, True, parameters)
                        progress.echo(f"wrote {job.target}")
                        if job.grid is not None:
                            save_image(preview_grid(insts[0], job.image, img), job.grid, True, parameters)
                            progress.echo(f"wrote {job.grid}")
                progress.finished(len(results))

            invert.apply(insts, [j.image for j in jobs], editor=editor, settings=replace(settings, seed=seed),
                         on_images=write, on_step=progress.on_step, **options)
    if progress.signum is None:
        return None
    return progress.interrupted(f"{progress.done} of {len(todo)} results written; run the same command again to "
                                "make the rest")
