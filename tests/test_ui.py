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
    def __init__(self, work: Path):
        self.cwd, self.tmp = work / "cwd", work / "tmp"
        self.cwd.mkdir()
        self.tmp.mkdir()
        self.log = work / "server.log"
        env = {**os.environ, "TMPDIR": str(self.tmp), "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "invert.cli", "ui", "--model", "toy", "--port",
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
             steps=10, preview_every=0, init_text=""):
    """/fit's inputs in order: pairs (source, folder, befores, afters, held-out), method, steps, lr, guidance,
    image guidance, init text, seed, preview every."""
    return (source, folder, befores, afters, None, method, steps, 1e-2, 3, 1.5, init_text, 0, preview_every)


def apply_args(inst_files, images, source="Upload images", folder=None, text="", variations=1):
    """/apply's inputs: session instructions, uploaded .inst files, weights, images (source, folder, uploads),
    text, strength, steps, guidance, image guidance, seed, variations, fresh noise."""
    return ([], inst_files, "", source, folder, images, text, 1, 20, None, None, 0, variations, False)


def test_help_does_not_import_gradio_or_torch():
    code = ("import sys; from invert.cli.main import cli; "
            "cli.to_info_dict(cli.make_context('invert', ['ui', '--help'], resilient_parsing=True)); "
            "print(sorted(m for m in ('gradio', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_without_gradio_it_says_how_to_install(tmp_path):
    # None in sys.modules: `import gradio` fails as if it were not installed. The command alone, without the
    # group's set-up (which imports diffusers), answers in a second.
    code = "import sys; sys.modules['gradio'] = None; from invert.cli.main import ui; ui(['--model', 'toy'])"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "TMPDIR": str(tmp_path)})
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == ["Error: invert ui needs Gradio, an optional extra: pip install 'invert[ui]'"]
    assert not list(tmp_path.glob("invert-ui-*"))  # its temporary folder is gone too


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
    assert len(previews) == 4  # the held-out test images, edited by the final instruction
    inst = Instruction.load(inst_file)
    assert inst.method == "brush" and int(inst.meta["steps"]) == 10


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
