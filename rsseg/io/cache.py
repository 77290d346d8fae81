"""rsseg's cache folder: ``$RSSEG_CACHE_DIR``, else ``$XDG_CACHE_HOME/rsseg``, else
``~/.cache/rsseg`` (ONNX graphs of bundles, VRTs of STAC items)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Where cached files live (created on first use)."""
    root = os.environ.get("RSSEG_CACHE_DIR")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "rsseg"
