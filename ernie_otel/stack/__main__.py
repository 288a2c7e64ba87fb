"""``python -m ernie_otel.stack ...``: the same as ``ernie-otel stack ...`` (the --load helpers run this way)."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main(sys.argv[1:]))
