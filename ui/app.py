"""The web app: three tabs (Learn, Apply, Library) over the invert library, through ``backend`` only."""
from __future__ import annotations

import functools
import html
import inspect
import re
import sys
import traceback
from pathlib import Path
from typing import Callable

import gradio as gr
from PIL import Image

from .backend import InvertError, Model, open_image, printable
from .session import Session, Sessions

# Every event that runs the model shares this queue, one at a time: a fit holds the UNet (InstructBrush's
# processors or a LoRA adapter are installed on it while it fits), so two tabs must not sample or fit at once.
MODEL_QUEUE = "model"
MODEL_EVENT = {"concurrency_id": MODEL_QUEUE, "concurrency_limit": 1}
HERE = Path(__file__).resolve().parent
_MARKDOWN = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~&:])")  # CommonMark's escapable punctuation that matters

THEME = gr.themes.Soft(primary_hue="indigo", secondary_hue="sky", neutral_hue="slate")
CSS = """
.pixelated img { image-rendering: pixelated; }
#invert-header h1 { margin-bottom: 0; }
#invert-header p { margin-top: 4px; color: var(--body-text-color-subdued); }
.fit-bar { height: 10px; border-radius: 5px; background: var(--neutral-200); overflow: hidden; }
.fit-bar > div { height: 100%; background: var(--color-accent); transition: width 0.2s; }
.fit-line { margin-top: 6px; font-variant-numeric: tabular-nums; }
"""


class App:
    """The Gradio app of ``invert ui``: one model, one folder of per-session files under ``root``."""

    def __init__(self, model: str, root: Path, device: str = "auto", dtype: str = "auto"):
        self.model = Model(model, device, dtype)
        self.root = root
        self.sessions = Sessions(root / "sessions", Path(gr.utils.get_upload_folder()))
        self.blocks = self._build()

    def _build(self) -> gr.Blocks:
        from . import apply_tab, learn_tab, library_tab

        with gr.Blocks(title="invert", delete_cache=(600, 3600)) as blocks:
            gr.Markdown(f"# invert\nLearn an image edit from before/after examples, then apply it to new images. "
                        f"Base model: **{self.model.name}** ({self.model.resolution} px).", elem_id="invert-header")
            with gr.Tabs():
                with gr.Tab("Learn", id="learn"):
                    learned = learn_tab.build(self, blocks)
                with gr.Tab("Apply", id="apply"):
                    apply_tab.build(self, learned)
                with gr.Tab("Library", id="library"):
                    library_tab.build(self)
            blocks.unload(self._page_closed)
        blocks.queue(default_concurrency_limit=None)  # model events set their own limit (MODEL_EVENT)
        return blocks

    def launch(self, host: str, port: int) -> str:
        """Start serving in a background thread; return the page's address."""
        self.blocks.launch(server_name=host, server_port=port, prevent_thread_lock=True, quiet=True,
                           allowed_paths=[str(self.root)], theme=THEME, css=CSS, show_error=False)
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        return f"http://{shown}:{port}/"

    def close(self) -> None:
        self.blocks.close()
        self.sessions.close_all()

    def session(self, request: gr.Request) -> Session:
        return self.sessions.get(request.session_hash)

    def _page_closed(self, request: gr.Request) -> None:
        self.sessions.close(request.session_hash)

    def handler(self, fn: Callable) -> Callable:
        """Show the library's errors on the page as the CLI prints them: one line (with the session's temporary
        folders left out of paths), never a traceback; anything unexpected as one line too, its traceback in
        the terminal."""

        def shown(exc: Exception) -> gr.Error:
            # The page renders an error's message as HTML: a file's name in it is shown as text, not markup.
            if isinstance(exc, InvertError):
                return gr.Error(html.escape(self.sessions.shorten(str(exc)), quote=False), print_exception=False)
            traceback.print_exc(file=sys.stderr)
            return gr.Error(html.escape(printable(f"internal error (details in the terminal): {type(exc).__name__}: "
                                                  f"{exc}"), quote=False), print_exception=False)

        if inspect.isgeneratorfunction(fn):
            @functools.wraps(fn)
            def generator(*args, **kwargs):
                try:
                    yield from fn(*args, **kwargs)
                except gr.Error:
                    raise
                except Exception as exc:
                    raise shown(exc) from None
            return generator

        @functools.wraps(fn)
        def plain(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except gr.Error:
                raise
            except Exception as exc:
                raise shown(exc) from None
        return plain

    def pixel_class(self) -> list[str]:
        """Galleries of small images (the toy model's 32 px) are scaled up with sharp pixels, not blurred."""
        return ["pixelated"] if self.model.resolution < 128 else []



def markdown_text(text: object) -> str:
    """Text from a file (a name, an init text, an error naming a file) as Markdown shows it, literally: control
    characters escaped (``printable``) and Markdown's own punctuation backslash-escaped, so that no name turns
    into a link, an image or markup."""
    return _MARKDOWN.sub(r"\\\1", printable(text))


def example_folders(pattern: str) -> list[tuple[str, str]]:
    """Folders matching ``pattern`` under the examples/ of the working folder or of invert's source checkout, as
    dropdown choices: (examples/..., the absolute path)."""
    found: dict[str, str] = {}
    for base in (Path.cwd(), HERE.parent):
        for folder in sorted((base / "examples").glob(pattern)):
            if folder.is_dir():
                found.setdefault(str(folder.resolve()), str(folder.relative_to(base)))
    return [(label, path) for path, label in found.items()]


def open_images(session: Session, uploads: list[str] | None, folder: str | None, what: str
                ) -> tuple[list[Path], list[Image.Image]]:
    """Images from uploaded files (copied into the session folder) or from a folder of this machine, opened and
    checked as ``invert apply`` opens its inputs."""
    from .backend import is_image_file

    if uploads:
        files = session.copy_uploads(uploads, session.new_folder(what))
    elif folder:
        path = Path(folder).expanduser()
        if not path.is_dir():
            raise InvertError(f"{folder}: no such folder")
        files = sorted(f for f in path.iterdir() if is_image_file(f))
        if not files:
            raise InvertError(f"{folder}: no images found")
    else:
        raise InvertError(f"give the {what} to edit: upload them or choose a folder")
    return files, [open_image(f) for f in files]


def first_example(choices: list[tuple[str, str]], preferred: str) -> str | None:
    """The choice with ``preferred`` as a path part (examples/toy/night/...), else the first one."""
    paths = [path for _, path in choices]
    return next((p for p in paths if preferred in Path(p).parts), paths[0] if paths else None)


def side_by_side(left: Image.Image, right: Image.Image, gap: int = 2) -> Image.Image:
    """``left | right`` on one canvas, both at the height of ``left``."""
    h = left.height
    right = right.resize((max(1, round(right.width * h / right.height)), h))
    canvas = Image.new("RGB", (left.width + gap + right.width, h), "white")
    canvas.paste(left, (0, 0))
    canvas.paste(right, (left.width + gap, 0))
    return canvas

