"""The ERNIE dashboard as a Prometheus console page: where its template lives, where Prometheus'
console libraries are, and the flags and URL that serve it.

``dashboards/generate.py`` writes ``dashboards/consoles/ernie.html`` from the same panels as the
Grafana JSON; Prometheus serves every file of ``--web.console.templates`` under ``/consoles/`` and
expands it with the ``*.lib`` files of ``--web.console.libraries`` (``prom.lib`` and ``menu.lib``,
which ship with Prometheus and must match its build: they name the build's own static assets).
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CONSOLES_DIR = REPO_ROOT / "dashboards" / "consoles"
CONSOLE_PAGE = "ernie.html"
LIBRARIES_ENV = "ERNIE_OTEL_CONSOLE_LIBRARIES"

# Where packages put prom.lib: Debian ships it only as a documentation example; the upstream
# tarball puts console_libraries/ next to the binary (copied to /usr/share/prometheus by most
# installs); /etc/prometheus is where Debian's own service would look.
LIBRARY_CANDIDATES = (
    Path("/usr/share/doc/prometheus/examples/console_libraries"),
    Path("/usr/share/prometheus/console_libraries"),
    Path("/etc/prometheus/console_libraries"),
)


class ConsoleLibrariesNotFoundError(RuntimeError):
    pass


def console_libraries() -> Path:
    """The folder holding Prometheus' prom.lib: ``$ERNIE_OTEL_CONSOLE_LIBRARIES`` or the first
    packaged location that has it. Raises with one message naming both when there is none."""
    override = os.environ.get(LIBRARIES_ENV)
    candidates = (Path(override),) if override else LIBRARY_CANDIDATES
    for folder in candidates:
        if (folder / "prom.lib").is_file():
            return folder
    raise ConsoleLibrariesNotFoundError(
        f"no prom.lib in {', '.join(map(str, candidates))}: the ERNIE console dashboard needs Prometheus' "
        f"console libraries (Debian package `prometheus`; or set {LIBRARIES_ENV} to their folder)")


def prometheus_flags() -> list[str]:
    """The Prometheus command-line flags that serve the console dashboard."""
    return [f"--web.console.templates={CONSOLES_DIR}", f"--web.console.libraries={console_libraries()}"]


def dashboard_url(prometheus_url: str, jaeger_url: str | None = None) -> str:
    """The console dashboard on this Prometheus; ``jaeger_url`` sets where its trace links point
    (the page's default is the default Jaeger port)."""
    url = f"{prometheus_url}/consoles/{CONSOLE_PAGE}"
    return f"{url}?jaeger={jaeger_url}" if jaeger_url else url
