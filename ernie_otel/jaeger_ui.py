"""Where the Jaeger UI's built assets live, for the stack's Jaeger (``jaeger_query.ui.assets_path``).

Jaeger v2 built from the Go module embeds no UI (its release build copies the UI in from the
jaeger-ui repository), so Jaeger alone serves a placeholder page. ``scripts/setup.sh`` takes the
built UI of the matching release from an archive the user points it at (``ERNIE_OTEL_JAEGER_UI``),
checks its sha256 and unpacks it under the cache, next to the built binaries. Nothing here
downloads anything, and the assets are never part of the repository.
"""

from __future__ import annotations

import os
from pathlib import Path

# The UI release that matches Jaeger v2.13.0 (Go module v1.76.0, collector/build.sh).
JAEGER_UI_VERSION = "v1.76.0"
# An archive (or a folder holding it) of the built UI: setup.sh reads it, the stack never does.
ARCHIVE_ENV = "ERNIE_OTEL_JAEGER_UI"
CACHE_ENV = "ERNIE_OTEL_CACHE"  # the same cache root collector/build.sh uses

HOW_TO_GET = (
    f"Jaeger UI assets not installed: Jaeger will serve its placeholder page instead of the UI. Download "
    f"assets.tar.gz of the jaeger-ui {JAEGER_UI_VERSION} release "
    f"(https://github.com/jaegertracing/jaeger-ui/releases/tag/{JAEGER_UI_VERSION}) and run "
    f"`{ARCHIVE_ENV}=/path/to/assets.tar.gz {ARCHIVE_ENV}_SHA256=<its sha256> make setup`."
)


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "ernie-otel")


def assets_dir() -> Path:
    """The folder setup.sh unpacks the UI into (it holds ``index.html`` once installed)."""
    return cache_root() / "jaeger-ui" / JAEGER_UI_VERSION


def installed_assets() -> Path | None:
    """The unpacked UI, or None when setup.sh has not installed it."""
    folder = assets_dir()
    return folder if (folder / "index.html").is_file() else None
