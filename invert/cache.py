"""Where invert keeps files it can rebuild: the offline tokenizer, phrase embeddings."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$INVERT_CACHE``, else ``$XDG_CACHE_HOME/invert``, else ``~/.cache/invert``."""
    root = os.environ.get("INVERT_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "invert"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path
