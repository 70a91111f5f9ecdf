"""Where invert keeps files it can rebuild: the offline tokenizer, phrase embeddings."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$INVERT_CACHE``, else ``$XDG_CACHE_HOME/invert``, else ``~/.cache/invert``; created by whoever writes
    into it, who also says what a cache that cannot be written costs."""
    root = os.environ.get("INVERT_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "invert"
    return Path(root)
