"""What every command shares: library errors as one-line messages, invert's own messages, --quiet and --threads,
output checks, stop signals. Importing this module imports no torch (``invert --help`` stays fast)."""
from __future__ import annotations

import functools
import json
import logging
import math
import os
import signal
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import click

from invert.display import printable
from invert.errors import InvertError, InvertWarning
from invert.writing import make_folder, output_exists

from .numbers import number_option
from .threads import ENV as THREADS_ENV

if TYPE_CHECKING:
    from invert.fitting.checkpoint import FitStopped

OUT_OF_MEMORY = "out of GPU memory; try --low-memory or a smaller --resolution"
THREADS = "invert.cli.threads"  # ctx.meta key: set (maybe to None) by --threads, on the commands that run a model


def user_errors(fn):
    """Run a command's body with the libraries' logging quiet, invert's own messages ("loading ...") on stderr
    unless --quiet, torch's CPU threads set (commands with --threads), library errors (and running out of GPU
    memory) turned into one-line Click errors with a non-zero exit, and the library's warnings into one-line
    'warning:' messages."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        show_messages(bool(kwargs.get("quiet")))
        quiet_libraries()
        meta = click.get_current_context().meta
        if THREADS in meta:
            from .threads import use_threads

            use_threads(meta[THREADS])
        with warnings.catch_warnings():
            warnings.simplefilter("always", InvertWarning)  # one per file, even when the text repeats
            warnings.showwarning = _show_warning
            try:
                return fn(*args, **kwargs)
            except InvertError as exc:
                raise click.ClickException(str(exc)) from None
            except Exception as exc:
                torch = sys.modules.get("torch")  # imported by then if it ran out of memory
                if torch is None or not isinstance(exc, torch.OutOfMemoryError):
                    raise
                detail = (str(exc) or "OutOfMemoryError").splitlines()[0]
                raise click.ClickException(f"{OUT_OF_MEMORY} ({detail})") from None

    return wrapper


def quiet_libraries() -> None:
    """diffusers' and transformers' info logs and diffusers' component-loading bars would bury invert's own
    messages. Called when a command runs (never at import or for --help: importing them takes seconds); the
    hub's download bars stay, so a first download of real weights shows its progress."""
    import diffusers
    import huggingface_hub
    import transformers

    for lib in (diffusers, transformers):
        lib.utils.logging.set_verbosity_error()
        lib.utils.logging.disable_progress_bar()
    huggingface_hub.utils.enable_progress_bars()  # transformers' switch turns the hub's download bars off too


class _Echo(logging.Handler):
    """invert's log records as plain lines on stderr, through Click (so that tests capture them)."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(printable(self.format(record)), err=True)


_ECHO = _Echo()


def show_messages(quiet: bool) -> None:
    """invert's info messages (what is loading, from where) on stderr; with --quiet only warnings."""
    log = logging.getLogger("invert")
    if _ECHO not in log.handlers:
        log.addHandler(_ECHO)
    log.setLevel(logging.WARNING if quiet else logging.INFO)


def quiet_option(fn):
    return click.option("--quiet", is_flag=True, help="No progress bar and no loading messages.")(fn)


def threads_option(fn):
    """--threads, read when the command runs (parsing imports no torch)."""
    def remember(ctx: click.Context, param: click.Parameter, value: int | None) -> None:
        ctx.meta[THREADS] = value

    return number_option("--threads", kind=int, minimum=1, maximum=4096, default=None, envvar=THREADS_ENV,
                         expose_value=False, callback=remember,
                         help="CPU threads for torch. Default: OMP_NUM_THREADS if set, else the cores other work "
                              f"leaves free (cores minus the load average, at least 1). [env: {THREADS_ENV}]")(fn)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    if issubclass(category, InvertWarning):
        click.echo(f"warning: {message}", err=True)
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def check_output(path: Path, force: bool) -> None:
    """Refuse, before any work, an output that exists (without --force), a name the file system cannot hold, or
    a folder that cannot take it; create its folder, as every command does for its outputs."""
    parent = path.parent if str(path.parent) else Path(".")
    make_folder(parent, path)
    if output_exists(path) and not force:
        raise InvertError(f"{path}: already exists (use --force to overwrite)")
    if not os.access(parent, os.W_OK):
        raise InvertError(f"{path}: cannot write (its folder {parent} is not writable)")


def json_text(value: object, **kwargs) -> str:
    """``value`` as the JSON a --json option prints: a non-finite float (the -inf score of a non-finite edit in a
    fit's validation curve, a NaN an edited file holds) as null, for NaN and Infinity are not JSON (jq and
    browsers refuse them)."""
    return json.dumps(_finite(value), allow_nan=False, **kwargs)


def _finite(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def process_device(device: str) -> str:
    """--device auto in a process that torchrun or accelerate launch started (LOCAL_RANK): the process's own GPU."""
    if device == "auto" and "LOCAL_RANK" in os.environ:
        import torch

        if torch.cuda.is_available():
            return f"cuda:{int(os.environ['LOCAL_RANK']) % torch.cuda.device_count()}"
    return device


def announce_stop(signum: int) -> None:
    click.echo(f"\n{signal.Signals(signum).name}: saving the fit's state after this step (again: stop at once, "
               "saving nothing)", err=True)


def saved(stopped: "FitStopped", path: Path, signum: int | None) -> click.ClickException:
    """Write a stopped fit's state and say how to resume it; a signal's exit status is 128 + its number."""
    from invert.fitting.checkpoint import FitDiverged

    try:
        stopped.state.save(path)
    except InvertError as exc:  # the disk is full, say: the message says what was lost
        error = click.ClickException(f"{stopped}; its state could not be saved: {exc}")
    else:
        error = click.ClickException(f"{stopped}; saved the state to {path}: run the same command with "
                                     f"--resume {path} to continue")
    if signum is not None and not isinstance(stopped, FitDiverged):
        error.exit_code = 128 + signum
    return error
