"""The ``invert`` command: a thin Click layer over the ``invert`` library. Each command lives in a module of its
own; the options and helpers they share come from cli/options.py and cli/common.py, never from here."""
from __future__ import annotations

import click

import invert

from .apply import apply
from .encode import encode
from .encoder import encoder
from .evaluate import eval_command
from .export import export_embeds, export_lora
from .fit import fit
from .fit_batch import fit_batch
from .import_visii import import_visii_command
from .inspect import inspect
from .library import library
from .phrases import phrases
from .ui import ui


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(invert.__version__, prog_name="invert")
def cli():
    """Learn an image-editing instruction from before/after pairs and apply it to new images.

    \b
      invert fit pairs/ -o sketch.inst                 # learn an instruction
      invert apply sketch.inst photo.jpg -o out/       # use it
      invert encode pairs/ -o sketch.inst --model toy  # no fitting: an edit encoder's
      invert apply sketch.inst photo.jpg -o out/ --text "at night"
      invert inspect sketch.inst
      invert phrases pairs/

    \b
    Environment (an option given on the command line wins):
      INVERT_MODEL    --model: hub id, local diffusers folder, or 'toy'
      INVERT_DEVICE   --device: auto, cpu, cuda, cuda:N or mps
      INVERT_DTYPE    --dtype: auto, fp32, fp16 or bf16
      INVERT_THREADS  --threads: torch's CPU threads (default: the cores other work
                      leaves free; OMP_NUM_THREADS if set)
      INVERT_CACHE    where phrase embeddings are cached (default ~/.cache/invert)
    """


for command in (fit, apply, encode, encoder, phrases, inspect, eval_command, export_lora, export_embeds, fit_batch,
                import_visii_command, library, ui):
    cli.add_command(command)
