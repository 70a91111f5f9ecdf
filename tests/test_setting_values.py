"""Every setting is checked wherever its value comes from: a flag of any command, a --config file, a model
folder's invert.json, a Python call. The hostile values are generated from the settings dataclasses and the
commands' own options, so a new option is covered without a line here."""
import dataclasses
import json
import math
import typing
from typing import Literal

import click
import pytest

import invert
from invert.api import model_defaults
from invert.cli.main import cli
from invert.cli.numbers import Number
from invert.errors import InvertError
from invert.methods import settings_classes, settings_for
from invert.settings import ApplySettings, FitSettings
from invert.settings.fields import INT_MAX
from invert.settings.limits import ModelLimits

SETTINGS = settings_classes()  # every registered method's settings class, by name
FIT_CLASSES = (FitSettings, *SETTINGS.values())


def commands(group: click.Group = cli, prefix: tuple[str, ...] = ()):
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from commands(command, (*prefix, name))
        else:
            yield (*prefix, name), command


def required_args(command: click.Command) -> list[str]:
    """Dummy values for the command's required arguments and options: enough for Click to parse the rest."""
    args: list[str] = []
    for p in command.params:
        if p.required and isinstance(p, click.Argument):
            args.append("dummy")
        elif p.required:
            args += [p.opts[0], "dummy"]
    return args


def parse(path: tuple[str, ...], args: list) -> click.Context:
    """Parse and convert a command line, as invoking it would, without running the command."""
    command = cli
    for name in path:
        command = command.commands[name]
    return command.make_context(" ".join(("invert", *path)), [str(a) for a in required_args(command) + args])


NUMBER_OPTIONS = [(path, p) for path, command in commands() for p in command.params
                  if isinstance(p.type, Number)]


def test_every_number_option_of_every_command_is_a_checked_number_with_an_upper_bound():
    plain = [(path, p.name) for path, command in commands() for p in command.params
             if isinstance(p.type, (click.types.IntParamType, click.types.FloatParamType))]
    assert not plain, f"number options with Click's own unchecked types: {plain}"
    assert len(NUMBER_OPTIONS) > 40
    for path, p in NUMBER_OPTIONS:
        assert p.type.kind is int or p.type.limits.get("maximum") is not None, (path, p.name, "an unbounded float")


def hostile_text(kind: type) -> list[str]:
    """Values no number option takes: not finite, past 64 bits, not a number; for a whole number, a fraction."""
    values = ["nan", "inf", "-inf", str(2**80), str(-(2**80)), "x", "[1]", "1e400"]
    return values + (["2.5", "true"] if kind is int else [])


@pytest.mark.parametrize("path,param", NUMBER_OPTIONS, ids=[f"{' '.join(p)} {o.name}" for p, o in NUMBER_OPTIONS])
def test_a_flag_refuses_hostile_numbers_naming_itself(path, param):
    flag = param.opts[0]
    for text in hostile_text(param.type.kind):
        with pytest.raises(click.BadParameter) as caught:
            parse(path, [flag, text])
        message = caught.value.format_message()
        assert flag in message and "\n" not in message, (flag, text, message)
    low, above, high = (param.type.limits.get(k) for k in ("minimum", "above", "maximum"))
    bound = low if low is not None else above
    if bound is not None:  # zero and negative numbers where not allowed, and the bounds themselves
        below = bound - 1
        with pytest.raises(click.BadParameter, match="at least|above"):
            parse(path, [flag, below])
    for edge in (low, high):
        if edge is not None:
            assert parse(path, [flag, edge]).params.get(param.name, edge) == edge
    if high is not None:
        with pytest.raises(click.BadParameter, match="at most"):
            parse(path, [flag, high + 1])


def setting_fields(*classes):
    seen = {}
    for cls in classes:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            seen.setdefault(f.name, (hints[f.name], f.metadata))
    return sorted(seen.items())


def bad_values(kind, limits) -> list:
    """Typed values (as TOML, JSON and Python give them) that a setting of ``kind`` and ``limits`` refuses."""
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    if typing.get_origin(kind) in (typing.Union, type(int | None)) and len(args) == 1:
        kind = args[0]
    if typing.get_origin(kind) is Literal:
        return ["no such choice", 3, True]
    if kind is bool:
        return ["yes", 1, None]
    if kind is str:
        return [3, ["a"]]
    if typing.get_origin(kind) is tuple or str in args:
        return [3, [1], {"a": 1}]
    values = [[0.1, 0.2], "fast", True, math.nan, math.inf, -math.inf, 2**80, -(2**80)]
    if kind is int:
        values += [2.5]
    low, above, high = (limits.get(k) for k in ("minimum", "above", "maximum"))
    if low is not None:
        values.append(low - 1)
    if above is not None:
        values.append(above)
    if high is not None:
        values.append(high * 2 if high else 1)
    return values


FIT_FIELDS = setting_fields(*FIT_CLASSES)


@pytest.mark.parametrize("name,rule", FIT_FIELDS, ids=[n for n, _ in FIT_FIELDS])
def test_a_config_file_value_is_checked_and_named_by_file_and_key(name, rule, tmp_path):
    config = tmp_path / "fit.toml"
    for value in bad_values(*rule):
        if value is None:
            continue
        config.write_text(f"{name.replace('_', '-')} = {toml(value)}\n")
        for path in (("fit",), ("fit-batch",)):
            with pytest.raises(click.BadParameter) as caught:
                parse(path, ["--config", config])
            message = caught.value.format_message()
            assert f"{config}: key '{name.replace('_', '-')}'" in message and "\n" not in message, (value, message)


def toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(map(toml, value)) + "]"
    return json.dumps(value)


@pytest.mark.parametrize("method", list(SETTINGS))
def test_a_model_folders_values_are_checked_and_named_by_file_and_key(method, tmp_path):
    own = setting_fields(FitSettings, SETTINGS[method])
    (tmp_path / "invert.json").write_text("{}")
    for name, rule in own:
        for value in bad_values(*rule):
            for where, fit in ((f"fit.{name}", {name: value}), (f"fit.{method}.{name}", {method: {name: value}})):
                (tmp_path / "invert.json").write_text(json.dumps({"fit": fit}, allow_nan=True))
                with pytest.raises(InvertError) as caught:
                    model_defaults(str(tmp_path), method, {})
                message = str(caught.value)
                assert message.startswith(f"{tmp_path / 'invert.json'}: key '{where}': "), (value, message)
    (tmp_path / "invert.json").write_text(json.dumps({"fit": {"steps": 300.0, method: {"lr": 0.03}}}))
    assert model_defaults(str(tmp_path), method, {}) == {"steps": 300, "lr": 0.03}


def test_a_model_folders_unknown_keys_are_refused_naming_file_and_key(tmp_path):
    """A misspelt key in invert.json would leave the default it meant to set as it was, without a word: refused as a
    --config file's are, whichever method is fitted."""
    path = tmp_path / "invert.json"
    for fit, key, words in (({"stpes": 5}, "fit.stpes", "unknown option"),
                            ({"vissi": {"lr": 0.5}}, "fit.vissi", "unknown option"),
                            ({"visii": {"brush_parts": 2}}, "fit.visii.brush_parts", "not an option of visii"),
                            ({"brush": {"stepz": 1}}, "fit.brush.stepz", "not an option of brush"),
                            ({"lora": 3}, "fit.lora", "expected an object of lora's option values")):
        path.write_text(json.dumps({"fit": fit}))
        with pytest.raises(InvertError) as caught:
            model_defaults(str(tmp_path), "visii", {})
        assert str(caught.value).startswith(f"{path}: key '{key}': {words}"), caught.value
    # another method's option, shared or in its object, and an older option name are not unknown
    path.write_text(json.dumps({"fit": {"brush_parts": 2, "top": 3, "lora": {"lora_rank": 8}}}))
    assert model_defaults(str(tmp_path), "visii", {}) == {"phrases_top": 3}


@pytest.mark.parametrize("name,rule", FIT_FIELDS, ids=[n for n, _ in FIT_FIELDS])
def test_a_python_call_checks_every_fit_option_before_any_work(name, rule, tmp_path):
    method = next(m for m, cls in SETTINGS.items() if name in {f.name for f in dataclasses.fields(cls)}) \
        if name not in {f.name for f in dataclasses.fields(FitSettings)} else "visii"
    for value in bad_values(*rule):
        with pytest.raises(InvertError) as caught:  # refused before the pairs are even looked for
            invert.fit(tmp_path / "no pairs here", method, model="toy", **{name: value})
        assert str(caught.value).startswith(f"option '{name}': "), (value, str(caught.value))
        with pytest.raises(InvertError, match=f"option '{name}'"):
            settings_for(method, {name: value})


APPLY_FIELDS = setting_fields(ApplySettings)


@pytest.mark.parametrize("name,rule", APPLY_FIELDS, ids=[n for n, _ in APPLY_FIELDS])
def test_a_python_call_checks_every_apply_option_before_any_work(name, rule, tmp_path):
    for value in bad_values(*rule):
        if value is None:  # None is "not given" for apply's options
            continue
        with pytest.raises(InvertError) as caught:  # before the file is even opened
            invert.apply(tmp_path / "no.inst", [], **{name: value})
        assert str(caught.value).startswith(f"option '{name}': "), (value, str(caught.value))


def test_a_python_call_checks_its_own_number_arguments_as_their_flags(tmp_path):
    # fit's save_every and apply's batch_size are arguments, not settings: unchecked, save_every=-1 checkpointed
    # every step, 2.5 whenever the step was a multiple of it, and a batch_size of 0, -1, 2.5 or "2" edited every
    # image in one batch, as did the default (None; invert apply's is 4)
    import inspect

    from invert.settings.apply import BATCH_SIZE, BATCH_SIZE_LIMITS
    from invert.settings.fit import SAVE_EVERY_LIMITS

    for name, call, limits in (("save_every", lambda v: invert.fit(tmp_path / "none", model="toy", save_every=v),
                                SAVE_EVERY_LIMITS),
                               ("batch_size", lambda v: invert.apply(tmp_path / "no.inst", [], batch_size=v),
                                BATCH_SIZE_LIMITS)):
        for value in [*bad_values(int, limits), "2"]:
            with pytest.raises(InvertError) as caught:  # before any work
                call(value)
            assert str(caught.value).startswith(f"option '{name}': "), (value, str(caught.value))
    assert inspect.signature(invert.apply).parameters["batch_size"].default == BATCH_SIZE
    assert parse(("apply",), []).params["batch_size"] == BATCH_SIZE


def test_settings_made_directly_are_checked_too():
    with pytest.raises(InvertError, match="option 'lr': must be a finite number, not nan"):
        FitSettings(lr=math.nan)
    with pytest.raises(InvertError, match="option 'guidance': must be at most 30"):
        dataclasses.replace(ApplySettings(), guidance=1e30)
    assert FitSettings(steps=300.0).steps == 300 and type(FitSettings(lr=1).lr) is float
    assert FitSettings(seed=INT_MAX).seed == INT_MAX
    with pytest.raises(InvertError, match="option 'seed': must be at most"):
        FitSettings(seed=INT_MAX + 1)


def test_mix_weights_are_checked(run, tmp_path):
    for weights in ("nan,1", "inf", "1e30,0", "x,1"):
        r = run("apply", tmp_path / "a.inst", tmp_path / "b.inst", tmp_path / "p.png", "-o", tmp_path / "o",
                "--mix", weights)
        assert r.exit_code == 1 and r.output.startswith("Error: --mix") and r.output.count("\n") == 1, r.output
    from invert.api import mixed_method

    with pytest.raises(InvertError, match="a --mix weight: must be a finite number, not nan"):
        mixed_method([None, None], None, [math.nan, 1.0])


def test_a_models_own_limits():
    limits = ModelLimits(positions=12, vae_factor=8, timesteps=100)
    limits.check({"tokens": 10, "pez_tokens": 10, "resolution": 64, "val_steps": 100, "steps": 100_000},
                 lambda n: f"--{n}")
    for name, value, words in [("tokens", 11, "--tokens: must be at most 10 for this model"),
                               ("pez_tokens", 11, "--pez_tokens: must be at most 10"),
                               ("resolution", 36, "--resolution: must be a multiple of 8 for this model"),
                               ("val_steps", 101, "--val_steps: must be at most 100 for this model")]:
        with pytest.raises(InvertError, match=words):
            limits.check({name: value}, lambda n: f"--{n}")
    with pytest.raises(InvertError, match="at most 100 for this model"):
        limits.check({"steps": 101}, lambda n: f"--{n}", {"steps": "sampling_steps"})


def test_the_fit_checks_the_models_limits_naming_the_source(run, tiny_model_dir, pairs_dir, tmp_path):
    """The tiny model's VAE halves the image: an odd size is refused, named by the flag or the config key."""
    r = run("fit", pairs_dir, "-o", tmp_path / "x.inst", "--model", tiny_model_dir, "--resolution", 33, "--steps", 0,
            "--init-text", "x")
    assert r.exit_code == 1 and "--resolution: must be a multiple of 2 for this model" in r.output, r.output
    config = tmp_path / "fit.toml"
    config.write_text("resolution = 33\n")
    r = run("fit", pairs_dir, "-o", tmp_path / "x.inst", "--model", tiny_model_dir, "--config", config, "--steps", 0,
            "--init-text", "x")
    assert r.exit_code == 1 and f"{config}: key 'resolution': must be a multiple of 2" in r.output, r.output
    assert not (tmp_path / "x.inst").exists()


def test_the_init_options_are_every_methods(run, tiny_model_dir, pairs_dir, tmp_path):
    """--init phrases runs the phrase search for any method, so its options are the fit's, not brush's."""
    for method in SETTINGS:
        fit, _ = settings_for(method, {"init": "phrases", "phrases_threshold": 1.0, "phrases_top": 3})
        assert (fit.phrases_threshold, fit.phrases_top) == (1.0, 3)
    r = run("fit", pairs_dir, "-o", tmp_path / "v.inst", "--model", tiny_model_dir, "--method", "visii", "--init",
            "phrases", "--threshold", 1, "--relative-threshold", "--steps", 0, "--quiet")
    assert r.exit_code == 0, r.output
    options = invert.Instruction.load(tmp_path / "v.inst").meta.options
    assert options["phrases_threshold"] == 1.0 and options["phrases_relative_threshold"] is True


def test_option_names_follow_one_rule():
    """An option of one choice (a method, an --init mode) is prefixed with its name; one of the whole fit, or
    shared by methods with one meaning, is not."""
    from invert.settings import InitSettings

    modes = typing.get_args(typing.get_type_hints(InitSettings)["init"])
    prefixes = (*SETTINGS, *modes)
    for method, cls in SETTINGS.items():
        for f in dataclasses.fields(cls):
            shared = sum(f.name in {g.name for g in dataclasses.fields(other)} for other in SETTINGS.values()) > 1
            assert f.name.startswith(f"{method}_") or shared, f"{method}'s option {f.name}"
    def prefixed(name: str) -> bool:
        return "_" in name and name.split("_")[0] in prefixes

    init_own = {f.name for f in dataclasses.fields(InitSettings)}
    for name in init_own - {"init", "init_text", "vocab"}:  # those three: every init mode's
        assert prefixed(name), f"the init option {name} belongs to one --init mode: its name says which"
    for f in dataclasses.fields(FitSettings):
        assert f.name in init_own or not prefixed(f.name), f"the fit's option {f.name}"


def test_older_option_names_still_work(tmp_path):
    """Renamed options answer to their older names: as a flag, a --config key, an invert.json key, a keyword."""
    assert parse(("fit",), ["--method", "brush", "--parts", 2, "--clip-weight", 0]).params["brush_parts"] == 2
    config = tmp_path / "fit.toml"
    config.write_text("parts = 3\nthreshold = 1.0\n")
    ctx = parse(("fit",), ["--config", config])
    assert ctx.params["brush_parts"] == 3 and ctx.params["phrases_threshold"] == 1.0
    (tmp_path / "invert.json").write_text(json.dumps({"fit": {"brush": {"parts": 3}, "top": 4}}))
    assert model_defaults(str(tmp_path), "brush", {}) == {"brush_parts": 3, "phrases_top": 4}
    assert model_defaults(str(tmp_path), "brush", {"parts": 2}) == {"phrases_top": 4}, "given, by its older name"
    _, brush = settings_for("brush", {"parts": 2, "parts_sequential": True})
    assert (brush.brush_parts, brush.brush_parts_sequential) == (2, True)
    with pytest.raises(InvertError, match="--brush-parts is given twice"):
        settings_for("brush", {"parts": 2, "brush_parts": 3})


def test_the_web_apps_settings_are_checked_naming_their_control():
    """The Learn and Apply tabs send their controls' values through the same check; an error names the control."""
    pytest.importorskip("gradio", reason="the ui extra is not installed")
    from invert.ui.backend import FIT_RULES, Model, apply_settings, method_options
    from invert.ui.controls import label

    class Page:  # the Learn tab's defaults without loading a model: the library's own
        def fit_defaults(self, method, chosen=None):
            return {r.name: r.default for r in FIT_RULES if r.name in method_options(method)}

    labels = {r.name: label(r.name) for r in FIT_RULES}
    for name, rule in FIT_FIELDS:
        method = next(m for m in SETTINGS if name in method_options(m))
        for value in bad_values(*rule):
            with pytest.raises(InvertError) as caught:
                Model.fit_options(Page(), method, {name: value}, labels)
            assert str(caught.value).startswith(f"{labels[name]}: "), (name, value, str(caught.value))
    for name, rule in APPLY_FIELDS:
        for value in bad_values(*rule):
            if value is not None:
                with pytest.raises(InvertError, match=f"^{label(name)}: "):
                    apply_settings({name: value}, {name: label(name)})
