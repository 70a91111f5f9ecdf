"""`invert ui`: the command, the app driven through its API (gradio_client) and in a headless browser (Selenium and
Debian's chromium), all on the shipped toy model. One app serves the whole module: started by the real command in
a subprocess, in an empty working folder and its own TMPDIR, so that the last test can check what it leaves."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

pytest.importorskip("gradio", reason="the ui extra is not installed (pip install 'invert[ui]')")

ROOT = Path(__file__).resolve().parent.parent
NIGHT = ROOT / "examples" / "toy" / "night"
STARTUP_SECONDS = 240  # importing gradio and torch and loading the model; a busy 2-core machine is slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, work: Path, model: str = "toy"):
        self.cwd, self.tmp = work / "cwd", work / "tmp"
        self.cwd.mkdir()
        self.tmp.mkdir()
        self.log = work / "server.log"
        env = {**os.environ, "TMPDIR": str(self.tmp), "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "invert.cli", "ui", "--model", model, "--port",
                                      str(free_port())], cwd=self.cwd, env=env, stdout=subprocess.PIPE,
                                     stderr=self.log.open("w"), text=True)
        self.banner = self._wait_for_banner()
        self.url = self.banner.split(" running at ")[1].split()[0]

    def _wait_for_banner(self) -> str:
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if line.startswith("invert ui running at"):
                return line.strip()
            if not line and self.proc.poll() is not None:
                break
        self.proc.kill()
        pytest.fail(f"invert ui did not start:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("ui-server"))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(server.url, verbose=False, download_files=str(server.cwd.parent / "downloads"))


def fit_args(source="Exemplar folder", folder=str(NIGHT / "train"), befores=None, afters=None, method="brush",
             steps=10, preview_every=0, init_text="make it night", model="toy", **settings):
    """/fit's inputs in order: pairs (source, folder, befores, afters, held-out), method, preview every, then every
    fit setting as the page shows it for the toy model and ``method`` (the model's own defaults, else the
    library's), ``steps``, ``init_text`` and ``settings`` changed. An init text unless one asks for none: an empty
    one is --init best's search, a dozen candidate texts sampled on every pair (the library fixture runs it)."""
    from invert.api import model_defaults
    from invert.ui.backend import FIT_RULES
    from invert.ui.controls import shown

    values = ({r.name: r.default for r in FIT_RULES} | model_defaults(model, method, {})
              | {"steps": steps, "init_text": init_text} | settings)
    return (source, folder, befores, afters, None, method, preview_every,
            *(shown(r, values[r.name]) for r in FIT_RULES))


def apply_args(inst_files, images, source="Upload images", folder=None, variations=1, **settings):
    """/apply's inputs: session instructions, uploaded .inst files, weights, images (source, folder, uploads), every
    apply setting (the library's defaults, ``settings`` changed), variations."""
    from invert.ui.backend import APPLY_RULES
    from invert.ui.controls import shown

    values = {r.name: r.default for r in APPLY_RULES} | settings
    return ([], inst_files, "", source, folder, images, *(shown(r, values[r.name]) for r in APPLY_RULES),
            variations)


def test_help_does_not_import_gradio_or_torch():
    code = ("import sys; from invert.cli.main import cli; "
            "cli.to_info_dict(cli.make_context('invert', ['ui', '--help'], resilient_parsing=True)); "
            "print(sorted(m for m in ('gradio', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_without_gradio_it_says_how_to_install(tmp_path):
    # None in sys.modules: `import gradio` fails as if it were not installed. The command alone, without the
    # group's set-up (which imports diffusers), answers in a second.
    code = ("import sys; sys.modules['gradio'] = None; from invert.cli.main import ui; "
            f"ui(['--model', 'toy', '--port', '{free_port()}'])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "TMPDIR": str(tmp_path)})
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        "Error: invert ui needs Gradio, an optional extra: pip install 'invert[ui]'"]
    assert not list(tmp_path.glob("invert-ui-*"))  # its temporary folder is gone too


def test_a_port_in_use_is_refused_at_once():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = f"from invert.cli.main import ui; ui(['--model', 'toy', '--port', '{port}'])"
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 1
    assert r.stderr.strip() == (f"Error: cannot listen on 127.0.0.1:{port} (Address already in use); choose "
                                "another --port or --host")


def test_it_listens_locally_and_says_so(server):
    assert server.url.startswith("http://127.0.0.1:")
    assert "local: only this computer can open it" in server.banner


@pytest.fixture(scope="module")
def fitted(client):
    """/fit's outputs for 10 InstructBrush steps on examples/toy/night/train."""
    return client.predict(*fit_args(steps=10), api_name="/fit")


def test_api_fit(fitted):
    from invert.instruction import Instruction

    status, losses, previews, inst_file, *_ = fitted
    assert "done: night-brush.inst" in status and "step 10 / 10" in status
    assert [row[0] for row in losses["data"]] == list(range(1, 11))  # one loss per step: the live curve's data
    assert not previews  # asked for none
    inst = Instruction.load(inst_file)
    assert inst.method == "brush" and inst.meta.steps == 10


def uploaded_pairs(count: int = 3) -> tuple[list, list]:
    from gradio_client import handle_file

    return tuple([handle_file(f) for f in sorted((NIGHT / "train" / side).iterdir())[:count]]
                 for side in ("before", "after"))


def test_previews_pause_the_fit_without_changing_it(client):
    """Previews stop the fit every N steps and resume it: the result is the uninterrupted fit's, exactly. LoRA,
    whose adapter is added to the UNet for each stretch of the fit and removed for each preview."""
    import torch
    from gradio_client import handle_file

    from invert.instruction import Instruction

    befores, afters = uploaded_pairs()
    held_out = [handle_file(sorted((NIGHT / "test" / "before").iterdir())[0])]
    results = {}
    for every in (0, 3):
        args = list(fit_args("Upload pairs", None, befores, afters, method="lora", steps=6, preview_every=every))
        args[4] = held_out
        status, _, previews, inst_file, *_ = client.predict(*args, api_name="/fit")
        assert "done: edit-lora" in status
        results[every] = Instruction.load(inst_file), previews
    assert not results[0][1]
    assert [p["caption"] for p in results[3][1]] == ["step 6"]  # the latest preview: the final instruction's
    a, b = results[0][0], results[3][0]
    assert a.tensors.keys() == b.tensors.keys()
    for key in a.tensors:
        assert torch.equal(a.tensors[key], b.tensors[key]), key


# Long enough that a second page's edit is queued before the fit ends on a busy machine (60 steps were not once).
STOPPED_FIT_STEPS = 200


def test_stop_keeps_the_state_and_resume_finishes(server, client, fitted):
    """Stop and Resume; meanwhile another page's edit waits in the queue: one model, one job at a time."""
    from gradio_client import Client, handle_file
    from gradio_client.utils import Status

    from invert.fitting.checkpoint import FitState
    from invert.instruction import Instruction

    job = client.submit(*fit_args(method="visii", steps=STOPPED_FIT_STEPS), api_name="/fit")
    deadline = time.monotonic() + 120
    while not any("step " in str(out[0]) and f" / {STOPPED_FIT_STEPS}" in str(out[0]) for out in job.outputs()):
        assert time.monotonic() < deadline and not job.done(), "the fit showed no progress"
        time.sleep(0.2)
    other = Client(server.url, verbose=False, download_files=str(server.cwd.parent / "downloads"))
    image = sorted((NIGHT / "test" / "before").iterdir())[0]
    edit = other.submit(*apply_args([handle_file(fitted[3])], [handle_file(image)]), api_name="/apply")
    while edit.status().code in (Status.STARTING, Status.JOINING_QUEUE, Status.SENDING_DATA):
        time.sleep(0.1)
    assert edit.status().code == Status.IN_QUEUE and not job.done()

    client.predict(api_name="/stop")
    status, _, _, _, ckpt = job.result(timeout=120)  # the API's outputs leave out buttons and states
    assert "stopped at step" in status
    assert len(edit.result(timeout=120)[2]) == 1  # its turn came once the fit had stopped
    state = FitState.load(ckpt["value"])
    assert 0 < state.step < STOPPED_FIT_STEPS

    status, losses, _, inst_file, *_ = client.predict(api_name="/resume")
    assert "done: night-visii" in status and f"step {STOPPED_FIT_STEPS} / {STOPPED_FIT_STEPS}" in status
    assert len(losses["data"]) == STOPPED_FIT_STEPS  # the curve goes on from where it stopped
    assert Instruction.load(inst_file).meta.steps == STOPPED_FIT_STEPS


def test_the_web_app_fits_and_applies_on_the_toy_dit(tmp_path_factory):
    """The web app on the other toy model, the toy DiT (a FLUX.2 [klein] editor, issue 29): a fit through its API
    starts from the model's own defaults (klein's text guidance) and its result edits an uploaded image."""
    from gradio_client import Client, handle_file
    from PIL import Image

    from invert.instruction import Instruction

    server = Server(tmp_path_factory.mktemp("ui-dit"), model="toy-dit")
    try:
        client = Client(server.url, verbose=False, download_files=str(server.cwd.parent / "downloads"))
        status, _, _, inst_file, *_ = client.predict(*fit_args(method="visii", steps=2, model="toy-dit"),
                                                     api_name="/fit")
        assert "done: night-visii" in status
        inst = Instruction.load(inst_file)
        assert inst.meta.backbone == "flux2-klein" and inst.meta.steps == 2
        image = sorted((NIGHT / "test" / "before").iterdir())[0]
        _, _, files = client.predict(*apply_args([handle_file(inst_file)], [handle_file(image)]), api_name="/apply")
        assert Image.open(files[0]).size == Image.open(image).size
    finally:
        server.stop()


def test_api_apply(client, fitted):
    from gradio_client import handle_file
    from PIL import Image

    image = sorted((NIGHT / "test" / "before").iterdir())[0]
    gallery, (before, after), files = client.predict(*apply_args([handle_file(fitted[3])], [handle_file(image)]),
                                                      api_name="/apply")
    assert [Path(f).name for f in files] == [f"{image.stem}.png"] and len(gallery) == 1
    result = Image.open(files[0])
    assert result.size == Image.open(image).size
    assert Image.open(before).size == result.size and Path(after).read_bytes() == Path(files[0]).read_bytes()

    # Mixing an instruction with itself, half and half, is that instruction: the same result.
    args = list(apply_args([handle_file(fitted[3]), handle_file(fitted[3])], [handle_file(image)]))
    args[2] = "0.5, 0.5"
    _, _, mixed = client.predict(*args, api_name="/apply")
    assert Image.open(mixed[0]).tobytes() == result.tobytes()

    _, _, varied = client.predict(*apply_args([handle_file(fitted[3])], [handle_file(image)], variations=2),
                                  api_name="/apply")
    assert [Path(f).name for f in varied] == [f"{image.stem}_seed0.png", f"{image.stem}_seed1.png"]
    assert Image.open(varied[0]).tobytes() != Image.open(varied[1]).tobytes()  # fresh noise from each seed


def test_the_web_app_fits_as_invert_fit_does(client, run, tmp_path):
    """The same pairs and settings give the same file, tensors and metadata (timings aside): the page sends only
    the settings changed from what `invert fit` would use, so the model folder's own defaults for the method (the
    toy model's visii: lr 3e-2, guidance 3) apply in both and are recorded alike."""
    import torch

    from invert.instruction import Instruction

    status, _, _, inst_file, *_ = client.predict(*fit_args(method="visii", steps=4), api_name="/fit")
    assert "done: night-visii" in status
    r = run("fit", NIGHT / "train", "-o", tmp_path / "cli.inst", "--model", "toy", "--method", "visii", "--steps", 4,
            "--init-text", "make it night", "--threads", 1, "--quiet")  # the app's server runs on one thread too
    assert r.exit_code == 0, r.output
    web, cli = Instruction.load(inst_file), Instruction.load(tmp_path / "cli.inst")
    assert web.meta.model_defaults == {"lr": 0.03, "guidance": 3.0, "loss_target": "cond"}
    assert replace(web.meta, fit_seconds=None, cost=None) == replace(cli.meta, fit_seconds=None, cost=None)
    assert web.tensors.keys() == cli.tensors.keys()
    for key in web.tensors:
        assert torch.equal(web.tensors[key], cli.tensors[key]), key


def test_api_settings_are_checked_naming_the_control(client):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="^Learning rate: must be at most 1, not 5.0$"):
        client.predict(*fit_args(method="visii", steps=4, lr=5.0), api_name="/fit")
    with pytest.raises(AppError, match="^Tokens: must be at most 75, not 500$"):
        client.predict(*fit_args(method="visii", steps=4, tokens=500), api_name="/fit")
    image = sorted((NIGHT / "test" / "before").iterdir())[0]
    inst = handle_file(ROOT / "tests" / "fixtures" / "v1" / "visii.inst")
    with pytest.raises(AppError, match="^Text guidance: must be at most 30, not 1e\\+30$"):
        client.predict(*apply_args([inst], [handle_file(image)], guidance=1e30), api_name="/apply")



def test_api_whole_numbers_are_checked_not_rounded(client, fitted, tmp_path):
    """A whole-number field given 2.5 is refused naming its control, as `--steps 2.5` is: not rounded to 2 by the
    page (which then ran with it) before the check could see it."""
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    from invert.library import build_library

    with pytest.raises(AppError, match="^Steps: expected a whole number, not 2.5$"):
        client.predict(*fit_args(method="visii", steps=2.5), api_name="/fit")
    for every, problem in ((1.5, "expected a whole number, not 1.5"), (-1, "must be at least 0, not -1")):
        args = list(fit_args(method="visii", steps=2))
        args[6] = every
        with pytest.raises(AppError, match=f"^Preview every N steps: {problem}$"):
            client.predict(*args, api_name="/fit")
    image = handle_file(sorted((NIGHT / "test" / "before").iterdir())[0])
    with pytest.raises(AppError, match="^Seed: expected a whole number, not 1.5$"):
        client.predict(*apply_args([handle_file(fitted[3])], [image], seed=1.5), api_name="/apply")
    with pytest.raises(AppError, match="^Variations: expected a whole number, not 1.5$"):
        client.predict(*apply_args([handle_file(fitted[3])], [image], variations=1.5), api_name="/apply")
    (tmp_path / "insts").mkdir()
    Path(tmp_path / "insts" / "night.inst").write_bytes(Path(fitted[3]).read_bytes())
    build_library([tmp_path / "insts"]).save(tmp_path / "lib.safetensors")
    with pytest.raises(AppError, match="^Mix only the best K: expected a whole number, not 1.5$"):
        client.predict(handle_file(tmp_path / "lib.safetensors"), image, image, 0.1, 1.5, "its only one",
                       *apply_args([], [image])[3:], api_name="/library")


def test_init_encoder_takes_the_encoders_loss_target_as_the_page_shows(client, tmp_path):
    """Init = encoder: the loss target defaults to the encoder's own, as with `invert fit --init encoder`, and the page
    shows that one, not the model folder's; a loss target chosen on the page wins, as --loss-target does, even the
    folder's (before, choosing the toy model's visii cond, shown, was sending nothing: the fit took the encoder's)."""
    from invert.encoder import EncoderFile
    from invert.instruction import Instruction
    from invert.ui.backend import Model

    encoder = EncoderFile.load(ROOT / "invert" / "toy" / "model" / "encoder" / "visii.safetensors")
    assert encoder.info["options"].get("loss_target") == "cond"
    encoder.info["options"]["loss_target"] = "cfg"  # as if trained with the other loss
    chosen = {"init": "encoder", "encoder_file": str(encoder.save(tmp_path / "cfg.safetensors"))}
    model = Model("toy")
    assert model.fit_defaults("visii")["loss_target"] == "cond"
    assert model.fit_defaults("visii", chosen)["loss_target"] == "cfg"  # what the page shows with these
    for target in ("cfg", "cond"):
        status, _, _, inst_file, *_ = client.predict(
            *fit_args(method="visii", steps=1, init_text="", loss_target=target, **chosen), api_name="/fit")
        assert "done" in status
        assert Instruction.load(inst_file).meta.options["loss_target"] == target


def test_official_shows_the_official_codes_settings_and_fits_as_invert_fit_official(client, run, tmp_path):
    """Ticking Official shows the official code's values for every setting the user has not changed (the fit
    takes them, as `invert fit --official`), not the model folder's; one the user changed keeps its value, and
    unticking it shows the folder's again (before, the page kept showing the toy visii's lr 0.03, 300 steps, cond).
    A fit from the page with only Official ticked (and tiny step counts, and torch's AdamW: no bitsandbytes here)
    is `invert fit --official` with those."""
    import torch

    from invert.instruction import Instruction
    from invert.ui.backend import Model

    model = Model("toy")
    before = model.fit_defaults("visii")
    assert (before["lr"], before["steps"], before["loss_target"], before["official"]) == (0.03, 300, "cond", False)
    taken = model.fit_defaults("visii", {"official": True})  # what the fit takes
    assert {k: taken[k] for k in ("init", "grad_clip", "optimizer", "keep")} == \
        {"init": "pez", "grad_clip": "official", "optimizer": "adamw8bit", "keep": "best-mse"}
    kept, official = model.shown_defaults("visii", {**before, "official": True, "seed": 5}, before)
    assert kept == {"official": True, "seed": 5}  # the user's: they keep their values
    assert (official["lr"], official["steps"], official["loss_target"], official["init"]) == (1e-3, 1000, "cfg", "pez")
    assert (official["guidance"], official["image_guidance"], official["official"]) == (7.5, 1.5, False)
    assert model.shown_defaults("visii", {**official, **kept, "official": False}, official) == ({"seed": 5}, before)

    small = {"steps": 2, "pez_steps": 2, "optimizer": "adamw"}
    page = {**official, "official": True, **small}
    assert model.fit_options("visii", page, {}) == {"official": True, **small}  # only those are sent
    status, _, _, inst_file, *_ = client.predict(*fit_args(method="visii", **page), api_name="/fit")
    assert "done: night-visii" in status
    r = run("fit", NIGHT / "train", "-o", tmp_path / "cli.inst", "--model", "toy", "--method", "visii", "--official",
            "--steps", 2, "--pez-steps", 2, "--optimizer", "adamw", "--threads", 1, "--quiet")
    assert r.exit_code == 0, r.output
    web, cli = Instruction.load(inst_file), Instruction.load(tmp_path / "cli.inst")
    assert {k: web.meta.options[k] for k in ("lr", "loss_target", "init", "keep")} == \
        {"lr": 1e-3, "loss_target": "cfg", "init": "pez", "keep": "best-mse"}
    assert replace(web.meta, fit_seconds=None, cost=None) == replace(cli.meta, fit_seconds=None, cost=None)
    for key in web.tensors:
        assert torch.equal(web.tensors[key], cli.tensors[key]), key


def cli_message(fn, path: Path) -> str:
    """The one-line message the CLI prints for ``fn(path)``, naming the file as it was uploaded."""
    from invert.errors import InvertError

    with pytest.raises(InvertError) as error:
        fn(path)
    return str(error.value).replace(str(path), path.name)


def test_api_bad_uploads_get_the_cli_message(client, fitted, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    from invert.instruction import Instruction
    from invert.pairs import open_image

    bad = tmp_path / "cat.png"
    bad.write_text("this is text, not a PNG")
    expected = cli_message(open_image, bad)
    assert expected == "cat.png: not an image (Pillow does not recognize its contents)"
    after = tmp_path / "after" / "cat.png"  # a good after image of the same name
    after.parent.mkdir()
    after.write_bytes(sorted((NIGHT / "train" / "after").iterdir())[0].read_bytes())
    with pytest.raises(AppError) as page:
        client.predict(*fit_args("Upload pairs", None, [handle_file(bad)], [handle_file(after)]), api_name="/fit")
    assert str(page.value) == f"before/{expected}"

    with pytest.raises(AppError) as page:
        client.predict(*apply_args([handle_file(fitted[3])], [handle_file(bad)]), api_name="/apply")
    assert str(page.value) == expected

    not_inst = tmp_path / "edit.inst"
    not_inst.write_text("not safetensors")
    with pytest.raises(AppError) as page:
        client.predict(*apply_args([handle_file(not_inst)], [handle_file(after)]), api_name="/apply")
    assert str(page.value) == cli_message(Instruction.load, not_inst)


def test_api_library_shows_entry_names_as_text(client, fitted, tmp_path):
    """A library's entry names (its files' stems) reach the page's Markdown and chart as text: no control
    character, no link, no markup."""
    import shutil
    import unicodedata

    from gradio_client import handle_file

    from invert.library import build_library

    name = "[x](javascript:alert(1)) **b** \x1b]0;pwned\x07\u202e\nError: forged"
    (tmp_path / "insts").mkdir()
    shutil.copyfile(fitted[3], tmp_path / "insts" / f"{name}.inst")
    build_library([tmp_path / "insts"]).save(tmp_path / "lib.safetensors")
    before, after = (sorted((NIGHT / "test" / side).iterdir())[0] for side in ("before", "after"))
    weights, listed, *_ = client.predict(
        handle_file(tmp_path / "lib.safetensors"), handle_file(before), handle_file(after), 0.1, 0, "its only one",
        *apply_args([], [handle_file(before)])[3:], api_name="/library")
    shown = [row[0] for row in weights["data"]]
    for text in (listed, *shown):
        assert not [c for c in text if unicodedata.category(c) in ("Cc", "Cf")], text
    assert "[x](" not in listed and "**b**" not in listed and "\\[x\\]" in listed, listed
    assert shown == ["[x](javascript:alert(1)) **b** \\x1b]0;pwned\\x07\\u202e\\nError: forged"]


def test_api_library_temperature_takes_the_clis_range(client, fitted, tmp_path):
    """The Library tab's Temperature takes what `apply --library --temperature` takes (above 0, at most 100; was a
    0.01..1 slider): 5 mixes as ``Library.choose(temperature=5)`` does, and 0 or 200 is refused by the library's
    own check, naming the control."""
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    from invert.defaults import DEFAULT_TEMPERATURE
    from invert.instruction import Instruction
    from invert.library import KEY, Entry, Library
    from invert.pairs import find_pairs, load_pairs
    from invert.ui.backend import Model

    night = Instruction.load(fitted[3])
    other = Instruction.load(fitted[3])
    other.tensors[KEY] = -night.tensors[KEY]  # a key pointing away from the night pair's direction
    Library([Entry("night", night), Entry("other", other)]).save(tmp_path / "lib.safetensors")
    before, after = (sorted((NIGHT / "test" / side).iterdir())[0] for side in ("before", "after"))
    model = Model("toy")
    lib = Library.load(tmp_path / "lib.safetensors")
    pairs = load_pairs(find_pairs(before=before, after=after), lib.exemplar_size(model.editor))

    def page(temperature):
        return client.predict(handle_file(tmp_path / "lib.safetensors"), handle_file(before), handle_file(after),
                              temperature, 0, "its only one", *apply_args([], [handle_file(before)])[3:],
                              api_name="/library")

    for temperature in (5, DEFAULT_TEMPERATURE):
        _, chosen, weights = lib.instruction_for(*pairs, editor=model.editor, temperature=temperature)
        shown, *_ = page(temperature)
        assert [(row[0], row[1]) for row in shown["data"]] == [(e.name, round(w, 4)) for e, w in zip(chosen, weights)]
        assert (weights[1] > 0.3) == (temperature == 5)  # a high temperature mixes both, the default mostly one
    for temperature, problem in ((0, "must be above 0, not 0.0"), (200, "must be at most 100, not 200.0")):
        with pytest.raises(AppError, match=f"^Temperature: {problem}$"):
            page(temperature)


# The browser: Debian's chromium and chromium-driver (.ci/run installs them); nothing is downloaded.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1400,1000"]
FIT_SECONDS = 240


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    import shutil

    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and chromedriver):
        pytest.skip("SKIP browser test: no chromium/chromedriver (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"]:
        options.add_argument(flag)
    home = tmp_path_factory.mktemp("chromium-home")  # its crash-report settings and dconf go here, not in ~
    driver = webdriver.Chrome(service=Service(chromedriver, env={**os.environ, "HOME": str(home)}), options=options)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def library_file(client, tmp_path_factory) -> Path:
    """A library of four toy edits, each fitted through the app's API (VISII, 10 steps)."""
    import shutil

    from invert.library import build_library

    folder = tmp_path_factory.mktemp("library")
    for edit in ("night", "red_circle", "sepia_frame", "hue90"):
        inst = client.predict(*fit_args(folder=str(ROOT / "examples" / "toy" / edit / "train"), method="visii",
                                        init_text=""), api_name="/fit")[3]
        shutil.copyfile(inst, folder / f"{edit}.inst")
    build_library([folder]).save(folder / "toy.safetensors")
    return folder / "toy.safetensors"


class Page:
    """The app in the browser, with waits that fail the test with what they waited for."""

    def __init__(self, driver, shots: Path):
        self.d, self.shots = driver, shots

    def find(self, css: str):
        from selenium.webdriver.common.by import By

        return self.d.find_elements(By.CSS_SELECTOR, css)

    def text(self, css: str) -> str:
        return " ".join(e.text for e in self.find(css))

    def downloads(self, css: str) -> list[str]:
        """The names of the files a File component offers."""
        return [Path(a.get_attribute("href")).name for a in self.find(f"{css} a[href]")]

    def wait(self, what: str, condition, timeout: float = 60) -> None:
        """Wait for ``condition``; on a time-out fail with the page's error messages and a screenshot."""
        from selenium.common.exceptions import TimeoutException
        from selenium.webdriver.support.ui import WebDriverWait

        try:
            WebDriverWait(self.d, timeout, poll_frequency=0.25).until(lambda _: condition())
        except TimeoutException:
            shot = self.screenshot("failed.png")
            pytest.fail(f"timed out waiting for {what}; the page says {self.text('.toast-body')!r}; see {shot}")

    def tab(self, name: str) -> None:
        next(b for b in self.find("button[role=tab]") if b.text.strip() == name).click()

    def type(self, css: str, value: str) -> None:
        from selenium.webdriver.common.keys import Keys

        field = self.find(css)[0]
        field.send_keys(Keys.CONTROL, "a")
        field.send_keys(value, Keys.TAB)

    def upload(self, elem_id: str, path: Path) -> None:
        self.find(f"#{elem_id} input[type=file]")[0].send_keys(str(path))
        self.wait(f"{path.name} uploaded to #{elem_id}", lambda: self.downloads(f"#{elem_id}") == [path.name])

    def screenshot(self, name: str) -> Path:
        """The whole page, beyond the window (Chrome's DevTools capture), as README shows it."""
        import base64

        size = self.d.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
        shot = self.d.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True,
                                                                 "clip": {"x": 0, "y": 0, "width": size["width"],
                                                                          "height": size["height"], "scale": 1}})
        path = self.shots / name
        path.write_bytes(base64.b64decode(shot["data"]))
        return path


@pytest.fixture
def screenshots(tmp_path) -> Path:
    """INVERT_UI_SCREENSHOTS=DIR keeps them (README's come from here); else a temporary folder."""
    folder = Path(os.environ.get("INVERT_UI_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.mark.browser
def test_browser_learn_apply_and_library(server, browser, library_file, screenshots):
    page = Page(browser, screenshots)
    api_sessions = set(server.tmp.glob("invert-ui-*/sessions/session-*"))
    browser.get(server.url)
    page.wait("the exemplar pairs checked", lambda: "10 pairs" in page.text("#learn-info"))
    page.wait("InstructBrush's phrases", lambda: "would start from" in page.text("#learn-phrases"), timeout=120)
    assert len(page.find("#learn-pairs img")) == 10

    # README's screenshots (INVERT_UI_SCREENSHOTS) show the quick start's 100 steps, a finished edit; CI fits 20.
    steps = 100 if os.environ.get("INVERT_UI_SCREENSHOTS") else 20
    page.type("#learn-steps input", str(steps))
    page.type("#learn-preview-every input", str(steps // 2))
    page.find("#fit-button")[0].click()
    page.wait("the fit to finish", lambda: "done: " in page.text("#fit-status") or
              "failed" in page.text("#fit-status"), timeout=FIT_SECONDS)
    assert "done: night-brush.inst" in page.text("#fit-status"), page.text("#fit-status")
    assert f"step {steps} / {steps}" in page.text("#fit-status")
    assert len(page.find("#fit-previews img")) == 4
    assert page.downloads("#inst-file") == ["night-brush.inst"]
    page.screenshot("ui_learn.png")

    page.tab("Apply")
    page.wait("the learned instruction offered", lambda: "night-brush.inst" in page.text("#apply-listing"))
    page.find("#apply-button")[0].click()
    page.wait("five results", lambda: len(page.find("#apply-results img")) == 5, timeout=120)
    page.wait("the downloads", lambda: len(page.downloads("#apply-files")) == 5)
    assert page.downloads("#apply-files")[0] == "000.png"
    assert len(page.find("#apply-slider img")) == 2  # before and after
    page.screenshot("ui_apply.png")

    page.tab("Library")
    page.upload("library-file", library_file)
    page.upload("library-before", NIGHT / "test" / "before" / "001.png")
    page.upload("library-after", NIGHT / "test" / "after" / "001.png")
    page.find("#library-button")[0].click()
    page.wait("the library's results", lambda: len(page.find("#library-results img")) == 5, timeout=120)
    assert "Mixed: night" in page.text("#library-weights")  # the night pair picks the night instruction first
    page.screenshot("ui_library.png")

    sessions = set(server.tmp.glob("invert-ui-*/sessions/session-*")) - api_sessions
    assert len(sessions) == 1  # the page's own folder
    browser.get("about:blank")
    page.wait("the closed page's files removed", lambda: not next(iter(sessions)).exists(), timeout=30)


def test_stopping_leaves_nothing_behind(server):
    """Last: SIGTERM stops the app as Ctrl-C does; nothing is left in its working folder or its TMPDIR (but the
    folder torch itself makes there on import)."""
    assert server.stop() == 0
    assert not list(server.cwd.iterdir())
    assert [p.name for p in server.tmp.iterdir() if p.name != "torchinductor_root"] == []
