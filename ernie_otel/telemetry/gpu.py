"""GPU gauges through NVML: observed only where NVML answers (absent, never a fake 0)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from opentelemetry.metrics import CallbackOptions, Meter, Observation

from .. import names

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GpuHandle:
    handle: Any
    attributes: dict[str, Any]


class NvmlSampler:
    """Looks NVML handles up once; each callback reads one figure per GPU.

    ``nvml`` is the ``pynvml`` module (from nvidia-ml-py) or a stand-in with the same functions,
    so the logic is testable without a GPU. Any read that fails yields no observation for that
    GPU; the first failure of each kind is logged, later ones are not (telemetry never breaks serving).
    """

    def __init__(self, nvml: Any) -> None:
        self.nvml = nvml
        self.gpus: list[GpuHandle] = []
        self._logged: set[str] = set()
        try:
            nvml.nvmlInit()
            for index in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                name = nvml.nvmlDeviceGetName(handle)
                uuid = nvml.nvmlDeviceGetUUID(handle)
                self.gpus.append(GpuHandle(handle, {
                    names.GPU_INDEX: index,
                    names.GPU_UUID: uuid.decode() if isinstance(uuid, bytes) else str(uuid),
                    names.GPU_NAME: name.decode() if isinstance(name, bytes) else str(name),
                }))
        except Exception as exc:  # no driver, no GPU: no GPU series at all
            self._log_once("init", exc)
            self.gpus = []

    def _log_once(self, what: str, exc: Exception) -> None:
        if what not in self._logged:
            self._logged.add(what)
            log.info("NVML %s unavailable (%s); GPU metrics are not reported", what, exc)

    def _read(self, what: str, fn: Callable[[Any], float | None]) -> Iterable[Observation]:
        for gpu in self.gpus:
            try:
                value = fn(gpu.handle)
            except Exception as exc:
                self._log_once(what, exc)
                continue
            if value is not None:
                yield Observation(value, gpu.attributes)

    def utilization(self, _: CallbackOptions) -> Iterable[Observation]:
        return self._read("utilization", lambda h: float(self.nvml.nvmlDeviceGetUtilizationRates(h).gpu))

    def memory_used(self, _: CallbackOptions) -> Iterable[Observation]:
        return self._read("memory", lambda h: int(self.nvml.nvmlDeviceGetMemoryInfo(h).used))

    def memory_total(self, _: CallbackOptions) -> Iterable[Observation]:
        return self._read("memory", lambda h: int(self.nvml.nvmlDeviceGetMemoryInfo(h).total))

    def memory_usage(self, _: CallbackOptions) -> Iterable[Observation]:
        def pct(h: Any) -> float | None:
            info = self.nvml.nvmlDeviceGetMemoryInfo(h)
            return None if not info.total else 100.0 * info.used / info.total
        return self._read("memory", pct)

    def temperature(self, _: CallbackOptions) -> Iterable[Observation]:
        return self._read("temperature", lambda h: float(self.nvml.nvmlDeviceGetTemperature(h, 0)))  # 0 = GPU core

    def power(self, _: CallbackOptions) -> Iterable[Observation]:
        return self._read("power", lambda h: self.nvml.nvmlDeviceGetPowerUsage(h) / 1000.0)  # mW -> W


def load_nvml() -> Any | None:
    try:
        import pynvml  # nvidia-ml-py
    except ImportError:
        return None
    return pynvml


def register_gpu_metrics(meter: Meter, nvml: Any | None = None) -> NvmlSampler | None:
    """Create the GPU gauges if NVML finds at least one GPU; otherwise create none."""
    nvml = nvml if nvml is not None else load_nvml()
    if nvml is None:
        return None
    sampler = NvmlSampler(nvml)
    if not sampler.gpus:
        return None
    callbacks = {
        names.GPU_UTILIZATION: sampler.utilization,
        names.GPU_MEMORY_USED: sampler.memory_used,
        names.GPU_MEMORY_TOTAL: sampler.memory_total,
        names.GPU_MEMORY_USAGE: sampler.memory_usage,
        names.GPU_TEMPERATURE: sampler.temperature,
        names.GPU_POWER: sampler.power,
    }
    for spec, callback in callbacks.items():
        meter.create_observable_gauge(spec.otel_name, callbacks=[callback], unit=spec.unit,
                                      description=spec.description)
    return sampler
