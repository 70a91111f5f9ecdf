"""Options declared once. The fit settings' options are generated from the typed settings (invert.settings and
invert.methods.settings), so ``fit`` and ``fit-batch`` take the same ones with the same defaults and help, and
the values a user gave reach the library by name. Importing this module imports no torch."""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, Callable, Literal

import click
from click.core import ParameterSource

from invert.defaults import DEFAULT_MODEL, NOISE_MODES
from invert.errors import InvertError
from invert.methods import method_entries, method_names, settings_classes
from invert.methods.settings import PhraseSettings
from invert.settings import FitSettings

from .common import threads_option

MODEL_HELP = "Base IP2P: hub id, local diffusers folder, or 'toy'."


def model_options(default_model: str | None):
    """--model, --device, --dtype and --threads, each also read from INVERT_MODEL / INVERT_DEVICE / INVERT_DTYPE /
    INVERT_THREADS."""
    def decorate(fn):
        fn = threads_option(fn)
        fn = click.option("--dtype", default="auto", show_default=True, envvar="INVERT_DTYPE",
                          type=click.Choice(["auto", "fp32", "fp16", "bf16"]),
                          help="auto: fp16 on cuda, fp32 on cpu. [env: INVERT_DTYPE]")(fn)
        fn = click.option("--device", default="auto", show_default=True, envvar="INVERT_DEVICE",
                          help="auto, cuda, cuda:1, mps or cpu. [env: INVERT_DEVICE]")(fn)
        default = "" if default_model is None else " [env: INVERT_MODEL]"
        fn = click.option("--model", default=default_model, show_default=default_model is not None,
                          envvar="INVERT_MODEL",
                          help=MODEL_HELP + (" Default: the one recorded in the file. [env: INVERT_MODEL]"
                                             if default_model is None else default))(fn)
        return fn

    return decorate


def noise_options(fn):
    """--seed, --noise and --fresh-noise (apply and eval): read them with :func:`noise_mode`."""
    fn = click.option("--noise", default=None, type=click.Choice(list(NOISE_MODES)),
                      help="stream: drawn in order from the fit's seed (the default without --seed); fit: the noise "
                           "the fit drew for each timestep, reused (the VISII paper's fixed noise); fresh: from "
                           "--seed, as diffusers' pipeline with that seed's generator (the default with --seed).")(fn)
    fn = click.option("--fresh-noise", is_flag=True, help="The same as --noise fresh (kept for older scripts).")(fn)
    return click.option("--seed", default=0, type=int,
                        help="Draw fresh noise from this seed, as diffusers does with generator=torch.Generator()."
                             "manual_seed(SEED): giving --seed means --noise fresh. Without it the fit's seed is "
                             "used (0 with --noise fresh alone).")(fn)


def noise_mode(ctx: click.Context, noise: str | None, fresh_noise: bool, num_variations: int = 1) -> str:
    """--noise as given, else fresh when a seed (or variations) was asked for, as a diffusers or A1111 user expects
    a seed to change the result; else the fit's stream. A seed with noise that ignores it is refused, not ignored."""
    seed_given = ctx.get_parameter_source("seed") not in (ParameterSource.DEFAULT, None)
    if fresh_noise and noise not in (None, "fresh"):
        raise InvertError(f"--fresh-noise and --noise {noise} contradict each other; give one")
    if noise in (None, "fresh") and (fresh_noise or seed_given or num_variations > 1):
        return "fresh"
    if noise is not None and noise != "fresh":
        asked = "--seed" if seed_given else "--num-variations" if num_variations > 1 else None
        if asked:
            raise InvertError(f"{asked} draws fresh noise, but --noise {noise} uses the fit's; drop {asked} or use "
                              "--noise fresh")
        return noise
    return "stream"


def config_option(fn):
    """--config FILE.toml: option values (``steps = 500``, ``method = "brush"``, ``vocab = ["default", "mediums"]``)
    as the command's defaults, through Click's default_map: the command line and the environment still win."""
    def load(ctx: click.Context, param: click.Parameter, path: Path | None) -> None:
        if path is None:
            return
        import tomllib

        try:
            values = tomllib.loads(path.read_text())
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise click.BadParameter(f"{path}: not a readable TOML file ({exc})", ctx, param) from None
        known = {p.name for p in ctx.command.params if p.name != "config" and p.expose_value}
        names = {key: key.replace("-", "_") for key in values}
        unknown = sorted(key for key, name in names.items() if name not in known)
        if unknown:
            raise click.BadParameter(f"{path}: unknown option {', '.join(map(repr, unknown))} (the options of "
                                     f"'invert {ctx.command.name}' are its flags without the dashes)", ctx, param)
        # a repeatable option (init-text, vocab) takes one value or a list of them, as on the command line
        repeatable = {p.name for p in ctx.command.params if getattr(p, "multiple", False)}
        values = {names[k]: [v] if names[k] in repeatable and not isinstance(v, list) else v
                  for k, v in values.items()}
        ctx.default_map = {**(ctx.default_map or {}), **values}

    return click.option("--config", type=click.Path(exists=True, dir_okay=False, path_type=Path), is_eager=True,
                        expose_value=False, callback=load,
                        help="A TOML file of option values (steps = 500, method = \"brush\"), used as defaults: "
                             "the command line and the environment override them.")(fn)


def _split_commas(ctx, param, value):
    """A tuple option takes repeated values and comma-separated ones alike."""
    if value is None:
        return value
    return tuple(part.strip() for v in value for part in v.split(",") if part.strip())


def _option(f: dataclasses.Field, kind: Any) -> Callable:
    flag = "--" + f.name.replace("_", "-")
    meta, default = f.metadata, f.default
    help_text = meta.get("help", "")
    if type(None) in typing.get_args(kind):  # X | None: an option of type X whose default is None
        kind = next(t for t in typing.get_args(kind) if t is not type(None))
    minimum = meta.get("minimum")
    if kind is bool:
        return click.option(flag, f.name, is_flag=True, default=default, help=help_text)
    if typing.get_origin(kind) is tuple:
        return click.option(flag, f.name, multiple=True, default=(),
                            callback=_split_commas if meta.get("split_commas", True) else None,
                            metavar=meta.get("metavar"), show_default=",".join(default) if default else False,
                            help=help_text + (" Repeatable, or comma-separated." if default == () else ""))
    if typing.get_origin(kind) is Literal:
        click_type: Any = click.Choice(list(typing.get_args(kind)))
    elif kind is int:
        click_type = click.IntRange(min=minimum) if minimum is not None else int
    elif kind is float:
        click_type = click.FloatRange(min=minimum) if minimum is not None else float
    else:
        click_type = str
    return click.option(flag, f.name, type=click_type, default=default, show_default=default is not None,
                        metavar=meta.get("metavar"), help=help_text)


def settings_options(*classes: type, only: set[str] | None = None) -> Callable:
    """A click option for every field of ``classes`` (or those named in ``only``); a name the classes share is
    declared once."""
    declared: dict[str, Callable] = {}
    for cls in classes:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if only is None or f.name in only:
                declared.setdefault(f.name, _option(f, hints[f.name]))

    def decorate(fn):
        for option in reversed(list(declared.values())):
            fn = option(fn)
        return fn

    return decorate


SETTING_NAMES = {f.name for cls in (FitSettings, *settings_classes().values()) for f in dataclasses.fields(cls)}

fit_settings_options = settings_options(FitSettings, *settings_classes().values())
phrase_options = settings_options(PhraseSettings, FitSettings, only={f.name for f in dataclasses.fields(PhraseSettings)}
                                  | {"vocab"})


def method_option(fn):
    return click.option("--method", default="visii", show_default=True, type=click.Choice(list(method_names())),
                        help="; ".join(f"{e.name}: {e.title}, {e.summary}" for e in method_entries()) + ".")(fn)


def given_settings(ctx: click.Context, values: dict[str, Any]) -> dict[str, Any]:
    """The fit settings the user set (on the command line, in the environment or a config file), by name:
    defaults are the library's to fill in, and another method's option, set, is the library's to refuse."""
    return {name: value for name, value in values.items()
            if name in SETTING_NAMES and ctx.get_parameter_source(name) != ParameterSource.DEFAULT}


def pop_settings(values: dict[str, Any]) -> dict[str, Any]:
    """Remove the fit settings from a command's keyword arguments; return them."""
    return {name: values.pop(name) for name in list(values) if name in SETTING_NAMES}


__all__ = ["DEFAULT_MODEL", "config_option", "fit_settings_options", "given_settings", "method_option", "model_options",
           "noise_mode", "noise_options", "phrase_options", "pop_settings", "settings_options"]
