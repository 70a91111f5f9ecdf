"""The set-up contract: README's two set-up commands are what CI runs, and the constraints file pins every
dependency, so a fresh machine installs the versions the suite was last green with."""
import configparser
import re
from pathlib import Path

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
    runs_pytest = [line for line in ci if "pytest" in line and not line.startswith("#")]
    assert runs_pytest == [tests], f".ci/run runs other test commands than README's: {runs_pytest}"


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
