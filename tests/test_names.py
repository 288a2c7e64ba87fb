"""The names module is the single source: docs, Prometheus filter and derivation rules agree with it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from ernie_otel import names

ROOT = Path(__file__).resolve().parent.parent
UNIT_SUFFIX = {"s": "_seconds", "By": "_bytes", "%": "_percent", "Cel": "_celsius", "W": "_watts"}


def test_docs_metrics_md_is_generated_from_the_catalogue() -> None:
    assert (ROOT / "docs" / "metrics.md").read_text() == names.catalogue_markdown(), (
        "docs/metrics.md is stale: run `python -m ernie_otel.names > docs/metrics.md`")


def test_prometheus_names_follow_from_otel_name_and_unit() -> None:
    # The rule both exporters apply: dots to underscores, unit suffix (annotations in braces add
    # none), _total for counters. A catalogue entry that breaks it would scrape under another name.
    for spec in names.CATALOGUE:
        expected = spec.otel_name.replace(".", "_")
        suffix = UNIT_SUFFIX.get(spec.unit, "")
        if suffix and not expected.endswith(suffix):
            expected += suffix
        if spec.kind is names.Kind.COUNTER:
            expected += "_total"
        assert spec.prom_name == expected, spec
    assert len({s.prom_name for s in names.CATALOGUE}) == len(names.CATALOGUE)
    assert len(names.CATALOGUE) >= 12


def test_design_names_are_kept() -> None:
    prom = {s.prom_name for s in names.CATALOGUE}
    assert {"ernie_inference_requests_total", "ernie_inference_latency_seconds", "ernie_inference_errors_total",
            "ernie_token_throughput", "ernie_queue_length", "gpu_memory_usage_percent"} <= prom
    assert {0.1, 0.3, 0.5, 0.8, 1, 2, 3} <= set(names.LATENCY.buckets) and max(names.LATENCY.buckets) >= 120


def test_prometheus_keep_filter_keeps_every_family() -> None:
    regex = re.compile(names.PROMETHEUS_KEEP_REGEX)
    for spec in names.CATALOGUE:
        for suffix in ("", "_bucket", "_count", "_sum"):
            assert regex.fullmatch(spec.prom_name + suffix), spec.prom_name
    assert regex.fullmatch(names.SPANMETRICS_CALLS_PROM)
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    keeps = [rc["regex"] for job in config["scrape_configs"] for rc in job.get("metric_relabel_configs", [])
             if rc.get("action") == "keep"]
    assert keeps and all(k == names.PROMETHEUS_KEEP_REGEX for k in keeps)


def test_bucket_overrides() -> None:
    overrides = names.load_bucket_overrides('{"ernie_inference_latency_seconds": [0.5, 1, 5]}')
    assert names.histogram_buckets(names.LATENCY, overrides) == (0.5, 1.0, 5.0)
    assert names.histogram_buckets(names.QUEUE_TIME, overrides) == names.QUEUE_TIME_BUCKETS
    for bad in ('{"nope": [1]}', '{"ernie_queue_time": [2, 1]}', "[1, 2]", "{", '{"ernie_queue_time": []}'):
        with pytest.raises(ValueError):
            names.load_bucket_overrides(bad)
