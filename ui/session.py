"""Each browser session's files: its uploads and results live in a temporary folder of its own, removed when
the page is closed and, for every session left, when the app stops."""
from __future__ import annotations

import itertools
import re
import shutil
import tempfile
import threading
from pathlib import Path

from .backend import InvertError, copy_file, make_folder, output_exists, write_failure


class Session:
    def __init__(self, folder: Path):
        self.folder = folder
        self.job = None  # the session's latest fit (a FitJob), kept for Stop and Resume
        self.job_name = ""  # its files' name: EDIT-METHOD
        self.checked = None  # the exemplar pairs last checked by the Learn tab (list of Pair), for its phrases
        self.results: dict[str, list[tuple[str, str, str]]] = {}  # a tab's latest edits: (before, result, caption)
        self.instructions: dict[str, Path] = {}  # .inst files learned here, by name, offered by the Apply tab
        self._numbers = itertools.count(1)

    def new_folder(self, prefix: str) -> Path:
        """A fresh subfolder, so that one upload never overwrites another's files."""
        return make_folder(self.folder / f"{prefix}-{next(self._numbers)}")

    def copy_uploads(self, files: list[str], folder: Path) -> list[Path]:
        """Copy uploaded files into ``folder`` under the names they were uploaded with, the names the library's
        messages (and ``invert fit``'s matching of befores to afters) use."""
        make_folder(folder)
        copied = []
        for f in files:
            target = folder / Path(f).name
            if output_exists(target):
                raise InvertError(f"two uploaded files are named {target.name}")
            copied.append(copy_file(f, target))
        return copied

    def unique_path(self, name: str) -> Path:
        """``name`` in the session folder, numbered when taken (night-brush.inst, night-brush-2.inst, ...)."""
        path, stem, suffix = self.folder / name, Path(name).stem, Path(name).suffix
        for n in itertools.count(2):
            if not output_exists(path):
                return path
            path = self.folder / f"{stem}-{n}{suffix}"

    def close(self) -> None:
        if self.job is not None:
            self.job.stop()
            self.job.join()
        shutil.rmtree(self.folder, ignore_errors=True)


class Sessions:
    """The sessions of the running app, by Gradio's session hash, each in its own folder under ``root``."""

    def __init__(self, root: Path, uploads: Path):
        self.root, self.uploads = root, uploads  # uploads: Gradio's upload cache
        make_folder(root)
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> Session:
        with self._lock:
            if key not in self._sessions:
                try:
                    folder = tempfile.mkdtemp(prefix="session-", dir=self.root)
                except OSError as exc:
                    raise write_failure(self.root, exc) from None
                self._sessions[key] = Session(Path(folder))
            return self._sessions[key]

    def close(self, key: str) -> None:
        with self._lock:
            session = self._sessions.pop(key, None)
        if session is not None:
            session.close()

    def close_all(self) -> None:
        for key in list(self._sessions):
            self.close(key)

    def shorten(self, message: str) -> str:
        """A message with the session folders and the upload cache left out of its paths: 'before/cat.png: not an
        image ...'."""
        message = re.sub(re.escape(str(self.root)) + r"/session-[^/]+/(?:[a-z]+-\d+/)?", "", message)
        return re.sub(re.escape(str(self.uploads)) + r"/[^/]+/", "", message)
