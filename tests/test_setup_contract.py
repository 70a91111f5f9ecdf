"""The set-up contract: README's two set-up commands are what CI runs, CI then runs every test README's command
leaves out, and the constraints file pins every dependency, so a fresh machine installs the versions the suite was
last green with."""
import configparser
import itertools
import re
import shlex
import tomllib
from pathlib import Path

from _pytest.mark.expression import Expression  # how pytest evaluates -m (no public name; pytest is pinned)

ROOT = Path(__file__).resolve().parent.parent


def setup_commands() -> list[str]:
    """The lines of the first code block under README's "## Set-up" heading."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Set-up"):]
    block = re.search(r"```\n(.*?)```", section, re.S)
    assert block, "README's Set-up section has no code block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_readme_install_and_test_commands_are_what_ci_runs():
    commands = setup_commands()
    assert len(commands) == 2, f"README's Set-up should give two commands (install; run the tests): {commands}"
    install, tests = commands
    assert "pip install" in install and "-c constraints.txt" in install, install
    assert "pytest" in tests, tests
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    for command in commands:
        assert command in ci, f".ci/run does not run README's command verbatim: {command}"
    assert ci_pytest_calls()[0] == tests, f".ci/run's first test command is not README's: {ci_pytest_calls()}"


def ci_pytest_calls() -> list[str]:
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    return [line for line in ci if "pytest" in line and not line.startswith("#")]


def test_ci_runs_exactly_the_tests_readmes_command_leaves_out():
    """README's command deselects the extended tests (pyproject.toml's addopts -m); .ci/run's second call is
    README's command with the -m that selects them. Every combination of registered markers a test can carry is
    selected by exactly one of the two, so no test is run twice or never; --strict-markers refuses a marker that
    is not registered (it would carry no such guarantee)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    addopts = shlex.split(config["addopts"])
    assert "--strict-markers" in addopts, addopts
    default = addopts[addopts.index("-m") + 1]
    readme, *others = ci_pytest_calls()
    assert len(others) == 1, f".ci/run should run README's command, then one call for the extended tests: {others}"
    extended = shlex.split(others[0])
    assert extended[:-2] == shlex.split(readme) and extended[-2] == "-m", (
        f".ci/run's second call should be README's command with a -m: {others[0]}")
    markers = [line.split(":")[0].strip() for line in config["markers"]]
    default_run, ci_run = Expression.compile(default), Expression.compile(extended[-1])
    for n in range(len(markers) + 1):
        for carried in itertools.combinations(markers, n):
            def has(name, /, **kwargs):
                return name in carried

            runs = default_run.evaluate(has), ci_run.evaluate(has)
            assert runs != (False, False), f"a test marked {carried or 'with nothing'} is never run"
            assert runs != (True, True), f"a test marked {carried or 'with nothing'} runs in both calls"


def requirement_names(spec: str) -> list[str]:
    names = []
    for line in spec.splitlines():
        line = line.split("#")[0].strip()
        if line:
            names.append(re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0])
    return names


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_constraints_pin_every_dependency_and_extra():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    wanted = requirement_names(cfg["options"]["install_requires"])
    for extra in cfg["options.extras_require"].values():
        wanted += requirement_names(extra)
    pinned = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and version, f"constraints.txt: {line!r} is not NAME==VERSION"
            pinned[normalize(name)] = version
    missing = sorted({n for n in wanted if normalize(n) not in pinned})
    assert not missing, f"constraints.txt does not pin {missing}: regenerate it (see its header)"
