"""ernie-otel: OpenTelemetry observability for ERNIE-4.5 inference services.

The public API is ``__all__``. Importing the package loads none of it: each name is imported on
first use, so ``import ernie_otel.engine`` does not pull in OpenTelemetry and ``ernie-serve
--help`` does not pull in torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Each public name (but __version__) -> the module that defines it.
_EXPORTS = {
    "BenchConfig": "ernie_otel.bench",
    "BenchResult": "ernie_otel.bench",
    "run_bench": "ernie_otel.bench",
    "ConfigError": "ernie_otel.config",
    "ServeConfig": "ernie_otel.serve",
    "TelemetrySettings": "ernie_otel.telemetry.settings",
    "Telemetry": "ernie_otel.telemetry.setup",
    "configure_telemetry": "ernie_otel.telemetry.setup",
    "Recorder": "ernie_otel.telemetry.recorder",
}
# Public names whose definition has another name in its module.
_RENAMED = {"configure_telemetry": "configure"}

__all__ = [
    "BenchConfig",
    "BenchResult",
    "ConfigError",
    "Recorder",
    "ServeConfig",
    "Telemetry",
    "TelemetrySettings",
    "__version__",
    "configure_telemetry",
    "run_bench",
]

if TYPE_CHECKING:
    from .bench import BenchConfig, BenchResult, run_bench
    from .config import ConfigError
    from .serve import ServeConfig
    from .telemetry.recorder import Recorder
    from .telemetry.settings import TelemetrySettings
    from .telemetry.setup import Telemetry
    from .telemetry.setup import configure as configure_telemetry


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ernie_otel' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), _RENAMED.get(name, name))
    globals()[name] = value  # once imported, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
