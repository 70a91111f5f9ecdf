"""``invert bench``: benchmarks. ``speed`` times fitting and applying against the reference training loop."""
from __future__ import annotations

import json
import os

import click

from .common import quiet_option, user_errors
from .options import model_options


BUSY_LOAD = 1.0  # a load average of one: another process keeping a whole core busy


@click.group()
def bench():
    """Measure invert: speed and memory of fitting and applying.

    \b
      invert bench speed --method visii --resolution 512 --json
    """


@bench.command()
@click.option("--method", default="visii", show_default=True, type=click.Choice(["visii", "brush", "lora"]))
@click.option("--resolution", default=512, show_default=True, type=click.IntRange(min=8))
@click.option("--steps", default=10, show_default=True, type=click.IntRange(min=1),
              help="Timed optimizer steps after the warm-up (the reference times as many of its own).")
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
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@quiet_option
@model_options("random")
@user_errors
def speed(method, resolution, steps, warmup, pairs, parts, loss_target, fit_steps, apply_steps, batch_size,
          apply_batches, low_memory, no_reference, as_json, quiet, model, device, dtype):
    """Time fit steps and apply, ours against the reference loop, in one run.

    The reference does per step what VISII's official code does (fp32, batch 1, the three-way guidance batch in
    one UNet call, encodings computed once) and, for brush, the paper's time parts one after another. MODEL
    'random' (the default) is the full IP2P architecture with random weights: timing does not depend on them.

    \b
      invert bench speed --method visii --resolution 512 --json
      invert bench speed --method brush --model toy --resolution 32 --steps 20
    """
    from invert.bench.speed import SpeedOptions, benchmark

    # Other work on the machine slows every timing (several-fold on a loaded CPU): said, so a number far from
    # README's is not taken for invert's. Read before the benchmark, whose own threads raise the load.
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    options = SpeedOptions(method=method, resolution=resolution, steps=steps, warmup=warmup, pairs=pairs, parts=parts,
                           loss_target=loss_target, fit_steps=fit_steps, apply_steps=apply_steps,
                           batch_size=batch_size, apply_batches=apply_batches, reference=not no_reference)
    result = benchmark(model, options, device=device, dtype=dtype, low_memory=low_memory)
    result["load_average"] = round(load, 2)
    if load >= BUSY_LOAD:
        click.echo(f"warning: the machine was busy before the benchmark (1-minute load average {load:.1f} on "
                   f"{os.cpu_count()} cores): these timings are of a shared machine, not invert's alone", err=True)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    r = result
    click.echo(f"{r['method']} on {r['device']}, model {r['model']}, {r['resolution']} px, {r['dtype']}, "
               f"loss {r['loss_target']}{', low memory' if r['low_memory'] else ''}")
    rows = [("steps/s", "steps_per_s", ".3g"), ("s per 1000 steps", "seconds_per_1000_steps", ".1f"),
            (f"whole fit ({r['whole_fit_steps']} steps), s", "projected_fit_seconds", ".1f"),
            ("fit peak memory, MB", "peak_memory_mb", ".0f")]
    click.echo(f"{'fit':<28}{'ours':>12}{'reference':>12}")
    for label, key, fmt in rows:
        ref = r.get(f"reference_{key}")
        click.echo(f"{label:<28}{r[key]:>12{fmt}}{'' if ref is None else format(ref, fmt):>12}")
    if "speedup_vs_reference" in r:
        click.echo(f"ours/reference: {r['speedup_vs_reference']:.2f}x faster")
    click.echo(f"apply ({r['apply_steps']} steps, batch {r['batch_size']}): {r['apply_images_per_s']:.3g} images/s, "
               f"peak memory {r['apply_peak_memory_mb']:.0f} MB")


from .bench_quality import quality  # noqa: E402  (defined in its own module, registered here)

bench.add_command(quality)
