"""Who a request is for (tenant) and what it cost: label values that never come from the client.

No OpenTelemetry here. A tenant label value is one of: an allow-listed value of the tenant
header, the name of the API key that authenticated the request (operator-given), ``default``
(no tenant stated), or ``other`` (anything else, and anything past the cardinality cap). The cap
is hard: at most ``max_tenants`` distinct names ever become label values in one process, however
many the allow-list or the key file hold; the rest go to ``other`` and are counted.
"""

from __future__ import annotations

import json
import math
import re
import threading
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

DEFAULT_TENANT = "default"
OTHER_TENANT = "other"
DEFAULT_TENANT_HEADER = "x-tenant-id"
DEFAULT_MAX_TENANTS = 50
# A tenant name must also be a sane label value and dashboard legend.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class Overflow(str, Enum):
    UNKNOWN = "unknown"  # a header value not on the allow-list
    CAP = "cap"  # an allowed name past the cardinality cap


def tenant_list(text: str) -> frozenset[str]:
    """``--tenants a,b,c`` -> the allow-list (ConfigError via ValueError for a bad name)."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    for name in names:
        if not _NAME.fullmatch(name) or name in (DEFAULT_TENANT, OTHER_TENANT):
            raise ValueError(f"tenant {name!r} must match {_NAME.pattern} and not be "
                             f"{DEFAULT_TENANT!r} or {OTHER_TENANT!r}")
    return frozenset(names)


class TenantResolver:
    """Maps what a request says about its tenant to a bounded set of label values."""

    def __init__(self, allowed: frozenset[str], max_tenants: int = DEFAULT_MAX_TENANTS) -> None:
        if max_tenants < 1:
            raise ValueError("the tenant cap must be at least 1")
        self.allowed = allowed
        self.max_tenants = max_tenants
        self._admitted: set[str] = set()
        self._lock = threading.Lock()

    @property
    def admitted(self) -> frozenset[str]:
        return frozenset(self._admitted)

    def resolve(self, header_value: str | None, key_name: str | None = None) -> tuple[str, Overflow | None]:
        """(label value, why it went to ``other`` or None). The API key's name wins over the header:
        a caller cannot claim another tenant's spend with a header once keys carry names."""
        if key_name:
            candidate = key_name
        elif header_value is None or not header_value.strip():
            return DEFAULT_TENANT, None
        else:
            candidate = header_value.strip()
            if candidate not in self.allowed:
                return OTHER_TENANT, Overflow.UNKNOWN
        if candidate in self._admitted:
            return candidate, None
        with self._lock:
            if candidate in self._admitted:
                return candidate, None
            if len(self._admitted) >= self.max_tenants:
                return OTHER_TENANT, Overflow.CAP
            self._admitted.add(candidate)
        return candidate, None


def resolve_tenant(resolver: TenantResolver, header_value: str | None,
                   key_name: str | None = None) -> tuple[str, Overflow | None]:
    """The one tenant rule: the authenticated key's name if there is one, else the allow-listed
    header value (see :class:`TenantResolver`)."""
    return resolver.resolve(header_value, key_name)


# ----------------------------------------------------------------------------------- pricing
@dataclass(frozen=True, slots=True)
class Price:
    """Per 1M input/output tokens, or per GPU-hour (a request pays its share of the batch: its
    wall time x price / 3600 / --max-num-seqs, so a full batch pays for the GPU exactly)."""

    input_per_1m: float = 0.0
    output_per_1m: float = 0.0
    gpu_hour: float = 0.0

    def cost(self, input_tokens: int, output_tokens: int, seconds: float, batch_slots: int) -> float:
        c = (input_tokens * self.input_per_1m + output_tokens * self.output_per_1m) / 1e6
        if self.gpu_hour:
            c += seconds * self.gpu_hour / 3600.0 / max(batch_slots, 1)
        return c


@dataclass(frozen=True, slots=True)
class Pricing:
    currency: str
    models: dict[str, Price]
    default: Price | None

    def for_model(self, model: str) -> Price | None:
        return self.models.get(model, self.default)


_PRICE_KEYS = ("input_per_1m", "output_per_1m", "gpu_hour")


def _price(where: str, data: object) -> Price:
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be an object with {', '.join(_PRICE_KEYS)}")
    unknown = set(data) - set(_PRICE_KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)} (allowed: {', '.join(_PRICE_KEYS)})")
    values: dict[str, float] = {}
    for key, value in data.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{where}.{key} must be a non-negative number")
        values[key] = float(value)
    if not values:
        raise ValueError(f"{where} names no price")
    return Price(**values)


def load_pricing(path: str) -> Pricing:
    """Read and check a pricing file (JSON); any problem is one ValueError line.

    ``{"currency": "USD", "models": {"ernie-4.5-tiny": {"input_per_1m": 0.1, "output_per_1m": 0.4}},
    "default": {"gpu_hour": 2.5}}``
    """
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object with 'models' and/or 'default'")
    unknown = set(data) - {"currency", "models", "default"}
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}")
    currency = data.get("currency", "USD")
    if not isinstance(currency, str) or not re.fullmatch(r"[A-Z]{3}", currency):
        raise ValueError(f"{path}: currency must be a three-letter code such as USD")
    models_raw = data.get("models", {})
    if not isinstance(models_raw, dict):
        raise ValueError(f"{path}: models must map model names to prices")
    models = {str(name): _price(f"models.{name}", p) for name, p in models_raw.items()}
    default = _price("default", data["default"]) if "default" in data else None
    if not models and default is None:
        raise ValueError(f"{path} prices nothing: give 'models' or 'default'")
    return Pricing(currency, models, default)
