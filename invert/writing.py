"""Writing output files, the one way every writer of invert writes: into a temporary file beside the target,
renamed over it once complete, so that a failure never leaves a half-written file nor harms the previous one;
and every failure, of any kind (a full disk, a file-size limit, a name past the file system's limit, a read-only
folder, a path through a file), is one :class:`InvertError` naming the file and the cause."""
from __future__ import annotations

import errno
import os
import re
import tempfile
from pathlib import Path
from typing import Callable

from safetensors import SafetensorError

from .errors import InvertError

# The bytes of the target's name kept in its temporary file's name: a name near the file system's limit (255
# bytes on most) must not fail only because its temporary file's name, longer by a prefix and suffix, would.
_TEMP_STEM_BYTES = 64


def write_atomically(path: str | os.PathLike, write: Callable[[str], object], force: bool = False) -> None:
    """Call ``write(tmp_path)`` then rename over ``path``, so a crash never leaves a half-written file; refuse to
    overwrite an existing file unless ``force``. A write that fails for any reason the file system gives leaves
    no temporary file and raises one InvertError naming ``path`` and the cause."""
    path = Path(path)
    if output_exists(path) and not force:
        raise InvertError(f"{path}: already exists (use --force to overwrite)")
    if not os.path.isdir(path.parent):
        raise InvertError(f"{path}: cannot write ({_no_folder(path.parent)})")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{_shortened(path.name)}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise write_failure(path, exc) from None
    os.close(fd)
    try:
        write(tmp)
        # mkstemp makes the file 0600 (and a writer may replace it with a private file of its own): the result
        # gets the mode any new file gets, so that a group, a web server or a shared folder can read it as the
        # user's umask allows.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, (OSError, SafetensorError)):  # safetensors reports the file system's errors as its own
            raise write_failure(path, exc) from None
        raise


def write_text(path: str | os.PathLike, text: str, force: bool = False) -> None:
    """``text`` (UTF-8) written atomically to ``path``, as :func:`write_atomically` writes."""
    write_atomically(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), force=force)


def make_folder(folder: str | os.PathLike, for_file: str | os.PathLike | None = None) -> Path:
    """Create ``folder`` (and its parents) for outputs, before any work, so that a bad one costs no model time.
    A failure is one InvertError naming ``for_file`` (the output the folder is for) or else the folder."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        cause = _no_folder(folder) if _through_a_file(folder) else f"cannot create {folder}: {exc.strerror or exc}"
        if for_file is not None:
            raise InvertError(f"{for_file}: cannot write ({cause})") from None
        raise InvertError(f"{folder}: cannot create the output folder ({cause})") from None
    return folder


def _through_a_file(folder: Path) -> Path | None:
    """The file (not a folder) on the way to ``folder``, if one is."""
    return next((p for p in (folder, *folder.parents) if os.path.lexists(p) and not os.path.isdir(p)), None)


def _no_folder(folder: Path) -> str:
    """Why ``folder``, which is not there as a folder, cannot take a file."""
    blocker = _through_a_file(folder)
    return f"{blocker} is a file, not a folder" if blocker else f"its folder {folder} does not exist"


def output_exists(path: str | os.PathLike) -> bool:
    """Whether an output file is already there. A path the file system cannot hold (a name past its limit) or
    reach (a folder it may not search) is refused with the write's own error, before any work is done."""
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as exc:
        raise write_failure(Path(path), exc) from None
    return True


def write_failure(path: Path, exc: BaseException) -> InvertError:
    """The one-line error of a failed write of ``path``."""
    return InvertError(f"{path}: cannot write ({_cause(path, exc)})")


def _cause(path: Path, exc: BaseException) -> str:
    """What the file system said, in words: an OSError's message, or the OS error safetensors wraps in its own
    ('Error while serializing: I/O error: File too large (os error 27)')."""
    code = exc.errno if isinstance(exc, OSError) else None
    if code is None:
        found = re.search(r"os error (\d+)", str(exc))
        code = int(found.group(1)) if found else None
    if code == errno.ENAMETOOLONG:
        return f"File name too long: {_name_bytes(path)} bytes, at most {_name_max(path.parent)} here"
    if code == errno.EFBIG:
        return "File too large: over the file-size limit (ulimit -f) or the file system's"
    if code is not None:
        return os.strerror(code)
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _name_bytes(path: Path) -> int:
    return len(os.fsencode(path.name))


def _name_max(folder: Path) -> int:
    """The longest file name (in bytes) the file system of ``folder`` (or of its nearest existing ancestor)
    allows."""
    for candidate in (folder, *folder.parents):
        try:
            return os.pathconf(candidate, "PC_NAME_MAX")
        except (OSError, ValueError, AttributeError):  # missing, or no pathconf (Windows)
            continue
    return 255


def _shortened(name: str) -> str:
    """The start of ``name``, at most _TEMP_STEM_BYTES bytes of it, cut at a character boundary (bytes that are
    not UTF-8 left out)."""
    return os.fsencode(name)[:_TEMP_STEM_BYTES].decode("utf-8", errors="ignore")


def _umask() -> int:
    """The process's umask. Linux reports it in /proc; elsewhere it can only be read by setting it, which is not
    thread-safe (the web app writes from threads), so that is the fallback."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


__all__ = ["make_folder", "output_exists", "write_atomically", "write_failure", "write_text"]
