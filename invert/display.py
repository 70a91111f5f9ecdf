"""Text read from files, made safe to show: an .inst's init text, names and model ids, a library's entry names, the
names of files found in a folder, the values of a config file.

A terminal obeys the control characters such text may hold: ESC starts sequences that retitle the window, clear
the screen or move the cursor; a carriage return or backspace overwrites what is shown; a newline forges a line
of output ('Error: ...'); and bidi controls (U+202E) reorder what the eye reads, in a terminal and in a browser.
Every command, every error message (:class:`invert.errors.InvertError`) and the web app show such characters as
their escapes instead."""
from __future__ import annotations

import unicodedata

# Control (C0, DEL, C1), format (bidi, zero-width), surrogate (a file name's undecodable bytes) characters and
# the line and paragraph separators.
_HIDDEN = {"Cc", "Cf", "Cs", "Zl", "Zp"}
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: object) -> str:
    """``str(text)`` with every control, format, surrogate and line- or paragraph-separator character written as
    its Python escape (``\\x1b``, ``\\n``, ``\\u202e``); all other text, any script's letters among it, unchanged."""
    text = str(text)
    if text.isprintable():  # nearly always: nothing to do
        return text
    return "".join(_escape(ch) if unicodedata.category(ch) in _HIDDEN else ch for ch in text)


def _escape(ch: str) -> str:
    code = ord(ch)
    if ch in _SHORT:
        return _SHORT[ch]
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


__all__ = ["printable"]
