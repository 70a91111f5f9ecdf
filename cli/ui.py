"""``invert ui``: the local web app (Gradio), an optional extra: ``pip install 'invert[ui]'``."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from invert.defaults import DEFAULT_MODEL
from invert.errors import InvertError

# main.py registers this command at its very end, so its helpers exist when this module is imported.
from .common import user_errors
from .numbers import number_option
from .options import model_options

INSTALL_HINT = "invert ui needs Gradio, an optional extra: pip install 'invert[ui]'"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


@click.command("ui")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; 0.0.0.0 makes the app reachable from other machines.")
@number_option("--port", kind=int, minimum=1, maximum=65535, default=7860, show_default=True)
@model_options(DEFAULT_MODEL)
@user_errors
def ui(host, port, model, device, dtype):
    """Start the web app: learn an edit from before/after pairs, apply it, edit with a library.

    Uploads and results live in a temporary folder that is removed when the app stops; files leave it only
    through the browser's downloads.

    \b
      invert ui --model toy
      invert ui --model ip2p/ --port 8080
    """
    import shutil
    import tempfile  # here, like the rest: `invert ui --help` answers at once

    _check_address(host, port)
    try:
        root = Path(tempfile.mkdtemp(prefix="invert-ui-"))
    except OSError as exc:
        raise InvertError(f"{tempfile.gettempdir()}: cannot create the app's temporary folder there "
                          f"({exc.strerror or exc}); set TMPDIR to a writable folder") from None
    # Gradio reads these when it is imported: its upload cache inside our folder, and no calls home.
    os.environ["GRADIO_TEMP_DIR"] = str(root / "gradio")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        try:
            import gradio  # noqa: F401  (here, not at the top: invert --help must not import it)
        except ImportError:
            raise InvertError(INSTALL_HINT) from None
        _serve(root, host, port, model, device, dtype)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _check_address(host: str, port: int) -> None:
    """Fail at once, not after loading Gradio and the model (a minute for a real one), when the address cannot be
    listened on."""
    import socket

    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will
            probe.bind(address)
    except OSError as exc:
        raise InvertError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --port "
                          "or --host") from None


def _serve(root: Path, host: str, port: int, model: str, device: str, dtype: str) -> None:
    import signal
    import time

    from invert.ui.app import App

    click.echo(f"loading {model} ...", err=True)
    app = App(model, root, device=device, dtype=dtype)
    try:
        url = app.launch(host, port)
    except OSError as exc:  # taken meanwhile; Gradio says "Cannot find empty port in range: ..."
        raise InvertError(f"cannot listen on {host}:{port} ({str(exc).split('. ')[0]}); choose another --port") \
            from None
    where = ("local: only this computer can open it" if host in LOCAL_HOSTS else
             f"listening on {host}: anyone who can reach this machine's port {port} can use the model")
    click.echo(f"invert ui running at {url} ({where}); Ctrl-C stops it")
    sys.stdout.flush()
    # SIGTERM ends the app the way Ctrl-C does, so that the temporary folder is removed either way.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        click.echo("stopping", err=True)
    finally:
        app.close()
