"""Options declared once. The fit settings' options are generated from the typed settings (invert.settings and
invert.methods.settings), so ``fit`` and ``fit-batch`` take the same ones with the same defaults and help, and
the values a user gave reach the library by name. Importing this module imports no torch."""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, Callable, Iterable, Literal

import click
from click.core import ParameterSource

from invert.defaults import DEFAULT_MODEL
from invert.methods import method_entries, method_names, settings_classes
from invert.settings import ApplySettings, FitSettings, InitSettings
from invert.settings.fields import BadValue, convert, flag

from .common import threads_option
from .numbers import Number, number

MODEL_HELP = ("Base editor (InstructPix2Pix, SDXL InstructPix2Pix, FLUX.2 [klein], FLUX.1 Kontext): hub id, local "
              "diffusers folder, 'toy' or 'toy-dit'.")
CONFIG = "invert.cli.config"  # ctx.meta key: the --config file and the key each option was read from


def model_options(default_model: str | None):
    """--model, --device, --dtype and --threads, each also read from INVERT_MODEL / INVERT_DEVICE / INVERT_DTYPE /
    INVERT_THREADS."""
    def decorate(fn):
        fn = threads_option(fn)
        fn = click.option("--dtype", default="auto", show_default=True, envvar="INVERT_DTYPE",
                          type=click.Choice(["auto", "fp32", "fp16", "bf16"]),
                          help="auto: fp16 on cuda (bf16 for the FLUX editors), fp32 on cpu. [env: INVERT_DTYPE]")(fn)
        fn = click.option("--device", default="auto", show_default=True, envvar="INVERT_DEVICE",
                          help="auto, cuda, cuda:1, mps or cpu. [env: INVERT_DEVICE]")(fn)
        default = "" if default_model is None else " [env: INVERT_MODEL]"
        fn = click.option("--model", default=default_model, show_default=default_model is not None,
                          envvar="INVERT_MODEL",
                          help=MODEL_HELP + (" Default: the one recorded in the file. [env: INVERT_MODEL]"
                                             if default_model is None else default))(fn)
        return fn

    return decorate


def _command(ctx: click.Context) -> str:
    """The command as typed, a subcommand with its group's name ('invert encoder train', not 'invert train')."""
    names = []
    while ctx.parent is not None:
        names.append(ctx.info_name)
        ctx = ctx.parent
    return " ".join(["invert", *reversed(names)])


def config_option(fn):
    """--config FILE.toml: option values (``steps = 500``, ``method = "brush"``, ``vocab = ["default", "mediums"]``)
    as the command's defaults, through Click's default_map: the command line and the environment still win. Each
    value is checked as the flag's is; an error names the file and the key."""
    def load(ctx: click.Context, param: click.Parameter, path: Path | None) -> None:
        if path is None:
            return
        import tomllib

        try:
            values = tomllib.loads(path.read_text())
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise click.BadParameter(f"{path}: not a readable TOML file ({exc})", ctx, param) from None
        params = {p.name: p for p in ctx.command.params if p.name != "config" and p.expose_value}
        # a key is a flag without its dashes: any of the option's spellings
        spellings = {o.lstrip("-").replace("-", "_"): p.name for p in params.values() for o in p.opts}
        unknown = sorted(key for key in values if key.replace("-", "_") not in spellings)
        if unknown:
            raise click.BadParameter(f"{path}: unknown option {', '.join(map(repr, unknown))} (the options of "
                                     f"'{_command(ctx)}' are its flags without the dashes)", ctx, param)
        checked, keys = {}, {}
        for key, value in values.items():
            name = spellings[key.replace("-", "_")]
            keys.setdefault(name, key)
            try:
                checked[name] = _file_value(params[name], value)
            except BadValue as exc:
                raise click.BadParameter(f"{path}: key '{key}': {exc}", ctx, param) from None
        ctx.default_map = {**(ctx.default_map or {}), **checked}
        ctx.meta[CONFIG] = (path, keys)

    return click.option("--config", type=click.Path(exists=True, dir_okay=False, path_type=Path), is_eager=True,
                        expose_value=False, callback=load,
                        help="A TOML file of option values (steps = 500, method = \"brush\"), used as defaults: "
                             "the command line and the environment override them.")(fn)


def _file_value(param: click.Parameter, value: Any) -> Any:
    """A --config value for ``param``, checked as its flag's: typed as the option is, within its limits."""
    if getattr(param, "multiple", False):
        # a repeatable option (init-text, vocab) takes one value or a list of them, as on the command line
        return [_file_item(param, v) for v in (value if isinstance(value, list) else [value])]
    return _file_item(param, value)


def _file_item(param: click.Parameter, value: Any) -> Any:
    kind = param.type
    if isinstance(kind, Number):
        return kind.check(value)
    if getattr(param, "is_flag", False):
        return convert(value, bool)
    if not isinstance(value, str):
        raise BadValue(f"expected text, not {value!r}")
    if isinstance(kind, click.Choice) and value not in kind.choices:
        raise BadValue(f"choose from {', '.join(map(str, kind.choices))}; not {value!r}")
    return value


def _split_commas(ctx, param, value):
    """A tuple option takes repeated values and comma-separated ones alike."""
    if value is None:
        return value
    return tuple(part.strip() for v in value for part in v.split(",") if part.strip())


def _option(f: dataclasses.Field, kind: Any) -> Callable:
    """A setting's click option. Its flag is its name (see invert.methods.settings for the naming rule); a renamed
    setting's older names stay as further flags (Click aliases them at no cost), and so as --config keys."""
    meta, default = f.metadata, f.default
    flags = [flag(f.name), *map(flag, meta.get("aliases", ()))]
    help_text = meta.get("help", "")
    if type(None) in typing.get_args(kind):  # X | None: an option of type X whose default is None
        kind = next(t for t in typing.get_args(kind) if t is not type(None))
    if kind is bool:
        return click.option(*flags, f.name, is_flag=True, default=default, help=help_text)
    if typing.get_origin(kind) is tuple:
        return click.option(*flags, f.name, multiple=True, default=(),
                            callback=_split_commas if meta.get("split_commas", True) else None,
                            metavar=meta.get("metavar"), show_default=",".join(default) if default else False,
                            help=help_text + (" Repeatable, or comma-separated." if default == () else ""))
    if typing.get_origin(kind) is Literal:
        click_type: Any = click.Choice(list(typing.get_args(kind)))
    elif kind in (int, float):
        click_type = Number(kind, meta)
        help_text = f"{help_text} {click_type.describe()}".strip()
    else:
        click_type = str
    return click.option(*flags, f.name, type=click_type, default=default, show_default=default is not None,
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
apply_settings_options = settings_options(ApplySettings)
sampling_options = settings_options(ApplySettings, only={"steps", "seed", "noise"})  # eval's


phrase_options = settings_options(InitSettings, only={"vocab", "phrases_top", "phrases_threshold",
                                                     "phrases_relative_threshold", "phrases_template"})


def fresh_noise_option(fn):
    return click.option("--fresh-noise", is_flag=True, help="The same as --noise fresh (kept for older scripts).")(fn)


def fit_low_memory_option(fn):
    """fit's and fit-batch's --low-memory (apply's has no gradients to checkpoint)."""
    return click.option("--low-memory", is_flag=True, help="Gradient checkpointing, VAE slicing and (FLUX) the text "
                        "encoders on the host between encodings: less memory, slower.")(fn)


def method_option(fn):
    return click.option("--method", default="visii", show_default=True, type=click.Choice(list(method_names())),
                        help="; ".join(f"{e.name}: {e.title}, {e.summary}" for e in method_entries()) + ".")(fn)


def given_settings(ctx: click.Context, values: dict[str, Any]) -> dict[str, Any]:
    """The fit settings the user set (on the command line, in the environment or a config file), by name:
    defaults are the library's to fill in, and another method's option, set, is the library's to refuse."""
    return {name: value for name, value in values.items()
            if name in SETTING_NAMES and ctx.get_parameter_source(name) != ParameterSource.DEFAULT}


def sources(ctx: click.Context, names: Iterable[str]) -> dict[str, str]:
    """Where each of the options ``names`` came from, as an error names it: the --config file and its key, or
    the flag (the library checks what only the model can tell, such as its text encoder's token count)."""
    path, keys = ctx.meta.get(CONFIG, (None, {}))
    return {name: f"{path}: key '{keys[name]}'" if ctx.get_parameter_source(name) == ParameterSource.DEFAULT_MAP
            and name in keys else flag(name) for name in names}


def pop_settings(values: dict[str, Any]) -> dict[str, Any]:
    """Remove the fit settings from a command's keyword arguments; return them."""
    return {name: values.pop(name) for name in list(values) if name in SETTING_NAMES}


__all__ = ["DEFAULT_MODEL", "Number", "apply_settings_options", "config_option", "fit_settings_options",
           "fresh_noise_option", "given_settings", "method_option", "model_options", "number", "phrase_options",
           "pop_settings", "sampling_options", "settings_options", "sources"]
