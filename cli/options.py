"""Options declared once. The fit settings' options are generated from the typed settings (invert.settings and
invert.methods.settings), so ``fit`` and ``fit-batch`` take the same ones with the same defaults and help, and
the values a user gave reach the library by name. Importing this module imports no torch."""
from __future__ import annotations

import dataclasses
import typing
from typing import Any, Callable, Literal

import click
from click.core import ParameterSource

from invert.defaults import DEFAULT_MODEL
from invert.methods import METHOD_NAMES, SETTINGS
from invert.methods.settings import PhraseSettings
from invert.settings import FitSettings

MODEL_HELP = "Base IP2P: hub id, local diffusers folder, or 'toy'."


def model_options(default_model: str | None):
    """--model, --device and --dtype, each also read from INVERT_MODEL / INVERT_DEVICE / INVERT_DTYPE."""
    def decorate(fn):
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


SETTING_NAMES = {f.name for cls in (FitSettings, *SETTINGS.values()) for f in dataclasses.fields(cls)}

fit_settings_options = settings_options(FitSettings, *SETTINGS.values())
phrase_options = settings_options(PhraseSettings, FitSettings, only={f.name for f in dataclasses.fields(PhraseSettings)}
                                  | {"vocab"})


def method_option(fn):
    return click.option("--method", default="visii", show_default=True, type=click.Choice(list(METHOD_NAMES)),
                        help="visii: learned prompt embedding; brush: InstructBrush's time-aware cross-attention K/V; "
                             "lora: a LoRA of change on the UNet's attention projections.")(fn)


def given_settings(ctx: click.Context, values: dict[str, Any]) -> dict[str, Any]:
    """The fit settings the user set (on the command line, in the environment or a config file), by name:
    defaults are the library's to fill in, and another method's option, set, is the library's to refuse."""
    return {name: value for name, value in values.items()
            if name in SETTING_NAMES and ctx.get_parameter_source(name) != ParameterSource.DEFAULT}


def pop_settings(values: dict[str, Any]) -> dict[str, Any]:
    """Remove the fit settings from a command's keyword arguments; return them."""
    return {name: values.pop(name) for name in list(values) if name in SETTING_NAMES}


__all__ = ["DEFAULT_MODEL", "fit_settings_options", "given_settings", "method_option", "model_options",
           "phrase_options", "pop_settings", "settings_options"]
