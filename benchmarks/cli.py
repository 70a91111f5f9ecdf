"""``python -m benchmarks``: benchmarks. ``speed`` times fitting and applying against the reference training loop."""
from __future__ import annotations

import json
import os
from pathlib import Path

import click

from invert.cli.common import quiet_option, user_errors
from invert.cli.options import model_options
from invert.methods import method_names

BUSY_LOAD = 1.0  # a load average of one: another process keeping a whole core busy


@click.group()
def bench():
    """Measure invert: speed and memory of fitting and applying.

    \b
      python -m benchmarks speed --method visii --resolution 512 --json
    """


@bench.command()
@click.option("--method", default="visii", show_default=True, type=click.Choice(list(method_names())))
@click.option("--resolution", default=None, type=click.IntRange(min=8),
              help="Image size. Default: the model's own (512 for IP2P, 32 for the toy model).")
@click.option("--steps", default=10, show_default=True, type=click.IntRange(min=1),
              help="Timed optimizer steps of ours after the warm-up, a multiple of --block; the reference and the "
                   "floor run as many of their own.")
@click.option("--block", default=2, show_default=True, type=click.IntRange(min=1),
              help="Steps per block: ours, the reference and the floor run in turn, a block each, until --steps.")
@click.option("--warmup", default=2, show_default=True, type=click.IntRange(min=1), help="Untimed first steps.")
@click.option("--pairs", default=1, show_default=True, type=click.IntRange(min=1), help="Synthetic exemplar pairs.")
@click.option("--parts", default=5, show_default=True, type=click.IntRange(min=1), help="brush: time parts.")
@click.option("--loss-target", default="cfg", show_default=True, type=click.Choice(["cfg", "cond"]))
@click.option("--fit-steps", default=1000, show_default=True, type=click.IntRange(min=1),
              help="The whole fit the projection is for (per time part for brush, as the paper).")
@click.option("--apply-steps", default=20, show_default=True, type=click.IntRange(min=1))
@click.option("--batch-size", default=1, show_default=True, type=click.IntRange(min=1),
              help="Images per sampling call when timing apply.")
@click.option("--apply-batches", default=1, show_default=True, type=click.IntRange(min=1),
              help="Timed sampling calls, after one warm-up call.")
@click.option("--low-memory", is_flag=True, help="Gradient checkpointing and VAE slicing (ours only).")
@click.option("--no-reference", is_flag=True, help="Skip the reference loop.")
@click.option("--no-floor", is_flag=True, help="Skip the floor (the bare UNet work of a step).")
@click.option("--reference-dtype", default=None, type=click.Choice(["fp32", "fp16", "bf16"]),
              help="The reference's compute precision. Default: ours', so that the ratio is about how the work is "
                   "done; another compares precisions too.")
@click.option("--fit-report", type=click.Path(exists=True, dir_okay=False),
              help="A fit's report (fit --json's output, or its .inst): project its phases (init search, training, "
                   "validation) onto this model from the per-row costs measured here.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@quiet_option
@model_options("random")
@user_errors
def speed(method, resolution, steps, block, warmup, pairs, parts, loss_target, fit_steps, apply_steps, batch_size,
          apply_batches, low_memory, no_reference, no_floor, reference_dtype, fit_report, as_json, quiet, model, device,
          dtype):
    """Time fit steps and apply: ours, the reference loop and the floor, interleaved in one run.

    The reference does per step what VISII's official code does (batch 1, the three-way guidance batch in one
    UNet call, encodings computed once, fp32 weights with autocast to ours' precision) and, for brush, the
    paper's time parts one after another. The floor is the UNet work a step cannot avoid. Ratios are medians
    over the cycles, with their range; a wide range gets a warning. MODEL 'random' (the default) is the full
    IP2P architecture with random weights: timing does not depend on them. Fix the thread count on a shared
    machine (OMP_NUM_THREADS).

    \b
      python -m benchmarks speed --method visii --resolution 512 --steps 2 --block 1 --warmup 1 --json
      python -m benchmarks speed --method brush --model toy --steps 20 --block 4
    """
    from .speed import SpeedOptions, benchmark

    # Other work on the machine slows every timing (several-fold on a loaded CPU): said, so a number far from
    # README's is not taken for invert's. Read before the benchmark, whose own threads raise the load.
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    options = SpeedOptions(method=method, resolution=resolution, steps=steps, block=block, warmup=warmup, pairs=pairs,
                           parts=parts, loss_target=loss_target, fit_steps=fit_steps, apply_steps=apply_steps,
                           batch_size=batch_size, apply_batches=apply_batches, reference=not no_reference,
                           floor=not no_floor, reference_dtype=reference_dtype,
                           fit_cost=read_fit_cost(fit_report) if fit_report else None)
    result = benchmark(model, options, device=device, dtype=dtype, low_memory=low_memory)
    result["load_average"] = round(load, 2)
    if load >= BUSY_LOAD:
        click.echo(f"warning: the machine was busy before the benchmark (1-minute load average {load:.1f} on "
                   f"{os.cpu_count()} cores): these timings are of a shared machine, not invert's alone", err=True)
    for warning in result["warnings"]:
        click.echo(f"warning: {warning}", err=True)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(format_speed(result))


def read_fit_cost(path: str) -> dict:
    """The ``cost`` of a fit's report: fit --json's output, or the .inst it wrote."""
    from invert.errors import InvertError

    if path.endswith(".inst"):
        from invert.instruction import Instruction

        cost = Instruction.load(path).meta.cost
    else:
        try:
            cost = json.loads(Path(path).read_text()).get("cost")
        except (ValueError, AttributeError):
            raise InvertError(f"--fit-report {path}: not the JSON object fit --json prints") from None
    if not cost:
        raise InvertError(f"--fit-report {path}: records no cost (fitted before invert counted it)")
    return cost


def format_speed(r: dict) -> str:
    """The benchmark's result as a short table and its ratios."""
    lines = [f"{r['method']} on {r['device']}, model {r['model']}, {r['resolution']} px, {r['dtype']}, "
             f"loss {r['loss_target']}{', low memory' if r['low_memory'] else ''}; {r['cycles']} cycles of "
             f"{r['block']} steps"]
    rows = [("steps/s", "steps_per_s", ".3g"), ("s per 1000 steps", "seconds_per_1000_steps", ".1f"),
            (f"whole fit ({r['whole_fit_steps']} steps), s", "projected_fit_seconds", ".1f"),
            ("fit peak memory, MB", "peak_memory_mb", ".0f")]
    lines.append(f"{'fit':<28}{'ours':>12}{'reference':>12}")
    for label, key, fmt in rows:
        ref = r.get(f"reference_{key}")
        lines.append(f"{label:<28}{r[key]:>12{fmt}}{'' if ref is None else format(ref, fmt):>12}")
    if "speedup_vs_reference" in r:
        low, high = r["speedup_vs_reference_quartiles"]
        autocast = " autocast" if r["reference_autocast"] else ""
        lines.append(f"ours/reference: {r['speedup_vs_reference']:.2f}x faster (median; quartiles "
                     f"{low:.2f}-{high:.2f}), reference in {r['reference_dtype']}{autocast}")
    if "ours_over_floor" in r:
        low, high = r["ours_over_floor_quartiles"]
        lines.append(f"ours/floor: {r['ours_over_floor']:.2f}x the bare UNet work (median; quartiles "
                     f"{low:.2f}-{high:.2f})")
    if "ceiling_vs_reference" in r:
        lines.append(f"structural ceiling (reference/floor): {r['ceiling_vs_reference']:.2f}x; ours reaches "
                     f"{r['ceiling_fraction']:.0%} of it")
    lines.append(f"apply ({r['apply_steps']} steps, batch {r['batch_size']}): {r['apply_images_per_s']:.3g} images/s, "
                 f"peak memory {r['apply_peak_memory_mb']:.0f} MB")
    if "projected_phase_seconds" in r:
        phases = ", ".join(f"{phase} {s:.1f} s" for phase, s in r["projected_phase_seconds"].items())
        share = r["projected_checks_over_loop"]
        lines.append(f"the fit report projected here: {phases}" + ("" if share is None else
                                                                     f"; the checks add {share:.0%} to the loop"))
    return "\n".join(lines)


from .cli_quality import quality  # noqa: E402  (defined in its own module, registered here)

bench.add_command(quality)
