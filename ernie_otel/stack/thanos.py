"""Thanos and the Prometheus shards of the fleet profile: the binary, every command line, the shard
config and the file_sd targets -- the only copy, which the stack's fleet entries (fleet.py) and the
tests (tests/thanos_fleet.py) both call.

Every Thanos listener is set to 127.0.0.1 explicitly, because Thanos defaults each one (the
receivers' capnproto port included) to 0.0.0.0.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..ports import FLEET_PORTS, HOST
from . import render
from .components import run_build_script
from .procs import REPO_ROOT
from .records import StackError

THANOS_DIR = REPO_ROOT / "deploy" / "thanos"
THANOS_BUILD = THANOS_DIR / "build.sh"
SHARD_CONFIG = REPO_ROOT / "deploy" / "prometheus-shard.yml"
ALERTS_DIR = REPO_ROOT / "alerts"
FLEET_GLOBAL_RULES = ALERTS_DIR / "fleet-global.yml"

SHARDS = 2  # the modulus of deploy/prometheus-shard.yml's hashmod rule
INGESTERS = 3  # the endpoints of deploy/thanos/hashring.json
REPLICATION_FACTOR = 2
# The label each ingesting receiver puts on its data; Thanos Query deduplicates on it.
REPLICA_LABEL = "receive_replica"
# The storage tiers of docs/pipeline.md: raw 3 d (hot), the ruler's 1 min blocks 7 d (warm),
# 5 min (and 1 h) downsamples 15 d (cold); 2-day blocks at most, so retention bites in time.
RAW_RETENTION = "3d"
TIER_1M_RETENTION = "7d"
DOWNSAMPLED_RETENTION = "15d"
MAX_COMPACTION_LEVEL = 3
# The shards and receivers keep 1 day locally: Thanos' object store holds the history.
LOCAL_RETENTION = "1d"
THANOS_HEALTH_TIMEOUT_S = 60.0
# Receive's default --tsdb.max-block-duration, in minutes (the stack leaves it at that).
RECEIVE_MAX_BLOCK_MINUTES = 120
# How long an ingesting receiver may take to open its tenant's TSDB after it starts.
RECEIVE_OPEN_MARGIN_S = 12.0


# ------------------------------------------------------------------------------ the binary
def build_thanos(timeout: float | None = None) -> Path:
    """The cached `thanos` binary of deploy/thanos/build.sh (built on first use, ~3 min cold)."""
    return run_build_script(THANOS_BUILD, timeout=timeout)


# ------------------------------------------------------------------------------ Thanos args
@dataclass(frozen=True)
class ReceivePorts:
    """The four listeners of one `thanos receive`."""

    grpc: int
    http: int
    remote_write: int
    capnproto: int


def objstore_config(conf_dir: Path, bucket: Path) -> Path:
    """deploy/thanos/objstore.yml with the bucket directory made absolute."""
    source = THANOS_DIR / "objstore.yml"
    text = render.substitute(source.read_text(), r"^(\s*directory:\s*)\S+$", rf"\g<1>{bucket}",
                             "bucket directory", source)
    conf_dir.mkdir(parents=True, exist_ok=True)
    path = conf_dir / "objstore.yml"
    path.write_text(text)
    return path


def hashring_config(conf_dir: Path, ingesters: Sequence[ReceivePorts]) -> Path:
    """deploy/thanos/hashring.json with these ingesting receivers' gRPC addresses."""
    config = json.loads((THANOS_DIR / "hashring.json").read_text())
    if len(config[0]["endpoints"]) != len(ingesters):
        raise StackError(f"deploy/thanos/hashring.json lists {len(config[0]['endpoints'])} receivers, "
                         f"the fleet runs {len(ingesters)}")
    config[0]["endpoints"] = [f"{HOST}:{p.grpc}" for p in ingesters]
    conf_dir.mkdir(parents=True, exist_ok=True)
    path = conf_dir / "hashring.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def receive_start_delay(max_block_minutes: int = RECEIVE_MAX_BLOCK_MINUTES, *, now: float | None = None,
                        margin_s: float = RECEIVE_OPEN_MARGIN_S) -> float:
    """Seconds an ingesting receiver should wait before it starts, to miss a Thanos v0.42.4 race.

    Receive prunes its tenants once a minute when the local clock's minute of the day is a multiple
    of twice the max block duration (cmd/thanos/receive.go), and checks that once at start-up; if
    the check lands there while the default tenant's TSDB is still opening, receive panics (nil
    pointer in tenant.shouldBeMarkedInactive) and exits 2. With 2 h blocks that is the first minute
    of 00:00, 04:00, 08:00, ... local time; with 1 min blocks every even minute. So: 0 when the
    start is neither in such a minute nor within ``margin_s`` of one, else until that minute is over.
    """
    period = 2 * max_block_minutes
    t = time.time() if now is None else now
    local = time.localtime(t)
    second = local.tm_sec + (t % 1.0)
    minute = local.tm_hour * 60 + local.tm_min
    if minute % period == 0:  # in a prune minute: wait for its end
        return 60.0 - second
    if (minute + 1) % period == 0 and second >= 60.0 - margin_s:  # one is about to begin
        return 120.0 - second
    return 0.0


def wait_receive_start(max_block_minutes: int = RECEIVE_MAX_BLOCK_MINUTES,
                       say: Callable[[str], None] | None = None) -> None:
    """Sleep for receive_start_delay() (at most ~72 s, a few times a day with 2 h blocks)."""
    delay = receive_start_delay(max_block_minutes)
    if delay > 0:
        if say is not None:
            say(f"  waiting {delay:.0f}s to start Thanos receive outside its tenant-prune minute")
        time.sleep(delay)


def receive_args(thanos: Path, ports: ReceivePorts, data: Path, *, replica: str | None = None,
                 hashring: Path | None = None, replication_factor: int = REPLICATION_FACTOR,
                 objstore: Path | None = None, retention: str | None = None) -> list[str]:
    """An ingesting receiver (replica set, no hashring) or the routing one (hashring, no TSDB use)."""
    args = [
        str(thanos), "receive",
        f"--grpc-address={HOST}:{ports.grpc}",
        f"--http-address={HOST}:{ports.http}",
        f"--remote-write.address={HOST}:{ports.remote_write}",
        f"--receive.capnproto-address={HOST}:{ports.capnproto}",
        f"--tsdb.path={data}",
        "--log.level=warn",
    ]
    # Receive refuses to start without an external label, even routing-only (it stores nothing).
    args.append(f'--label={REPLICA_LABEL}="{replica or "router"}"')
    if hashring is not None:
        args += [
            f"--receive.hashrings-file={hashring}",
            "--receive.hashrings-algorithm=ketama",
            f"--receive.replication-factor={replication_factor}",
        ]
    if retention is not None:
        args.append(f"--tsdb.retention={retention}")
    if objstore is not None:  # ship the 2 h blocks to the object store
        args.append(f"--objstore.config-file={objstore}")
    return args


def query_args(thanos: Path, http: int, grpc: int, endpoints: Sequence[int]) -> list[str]:
    return [
        str(thanos), "query",
        f"--http-address={HOST}:{http}",
        f"--grpc-address={HOST}:{grpc}",
        f"--query.replica-label={REPLICA_LABEL}",
        # Re-check the endpoints often, so a receiver that comes back is queried within seconds.
        "--store.sd-interval=2s",
        "--log.level=warn",
        *[f"--endpoint={HOST}:{port}" for port in endpoints],
    ]


def rule_args(thanos: Path, conf_dir: Path, *, http: int, grpc: int, query_http: int, alertmanager_port: int,
              rule_file: Path = FLEET_GLOBAL_RULES, objstore: Path | None = None,
              eval_interval: str | None = None) -> list[str]:
    """The Thanos ruler of the fleet: alerts/fleet-global.yml over Query, to Alertmanager, its
    blocks labelled tier="1m" (the 1 min tier) -- deploy/thanos/rule-*.yml with these ports,
    written into conf_dir (its data goes to conf_dir/rule). ``eval_interval``: None keeps
    Thanos' default (1 min: the warm tier's resolution)."""
    conf_dir.mkdir(parents=True, exist_ok=True)
    query_src = THANOS_DIR / "rule-query.yml"
    query = render.substitute(query_src.read_text(), re.escape(f"{HOST}:{FLEET_PORTS['thanos_query_http']}"),
                              f"{HOST}:{query_http}", "Thanos Query address", query_src)
    (conf_dir / "rule-query.yml").write_text(query)
    am_src = THANOS_DIR / "rule-alertmanagers.yml"
    am = render.substitute(am_src.read_text(), render.default_addr("alertmanager"), f"{HOST}:{alertmanager_port}",
                           "Alertmanager address", am_src)
    (conf_dir / "rule-alertmanagers.yml").write_text(am)
    args = [
        str(thanos), "rule",
        f"--http-address={HOST}:{http}",
        f"--grpc-address={HOST}:{grpc}",
        f"--data-dir={conf_dir / 'rule'}",
        f"--rule-file={rule_file}",
        f"--query.config-file={conf_dir / 'rule-query.yml'}",
        f"--alertmanagers.config-file={conf_dir / 'rule-alertmanagers.yml'}",
        '--label=tier="1m"',
        "--alert.label-drop=tier",
        "--log.level=warn",
    ]
    if eval_interval is not None:
        args.append(f"--eval-interval={eval_interval}")
    if objstore is not None:
        args.append(f"--objstore.config-file={objstore}")
    return args


def store_args(thanos: Path, data: Path, objstore: Path, *, http: int, grpc: int) -> list[str]:
    """The store gateway: serves the object store's blocks to Query."""
    return [str(thanos), "store", f"--data-dir={data}", f"--objstore.config-file={objstore}",
            f"--http-address={HOST}:{http}", f"--grpc-address={HOST}:{grpc}", "--log.level=warn"]


def compact_args(thanos: Path, data: Path, objstore: Path, *, http: int, selector: str, raw_retention: str,
                 wait: bool = True) -> list[str]:
    """One of the two compactors of docs/pipeline.md (selector: compact-raw-selector.yml or
    compact-1m-selector.yml of deploy/thanos/), with the tiers' per-resolution retention.
    ``wait``: keep running and compact every few minutes (the stack) rather than once."""
    args = [
        str(thanos), "compact", f"--data-dir={data}", f"--objstore.config-file={objstore}",
        f"--http-address={HOST}:{http}",
        f"--selector.relabel-config-file={THANOS_DIR / selector}",
        f"--retention.resolution-raw={raw_retention}",
        f"--retention.resolution-5m={DOWNSAMPLED_RETENTION}",
        f"--retention.resolution-1h={DOWNSAMPLED_RETENTION}",
        f"--debug.max-compaction-level={MAX_COMPACTION_LEVEL}",
        "--log.level=warn",
    ]
    if wait:
        args.append("--wait")
    return args


# ---------------------------------------------------------------------- Prometheus shards
def hashmod(value: str, modulus: int) -> int:
    """Prometheus' `hashmod` relabel action: the low 8 bytes of the MD5 sum, big-endian, mod."""
    digest = hashlib.md5(value.encode()).digest()  # Prometheus hashes with MD5; not a security use
    return int.from_bytes(digest[8:], "big") % modulus


def shard_config(conf_dir: Path, index: int, *, remote_write: str, alertmanager: str,
                 interval: str | None = None) -> Path:
    """deploy/prometheus-shard.yml as shard `index` in conf_dir: the two `shard-index` fields
    changed, rule files absolute, remote write and Alertmanager at these host:port addresses.
    Its targets are conf_dir/fleet-targets/*.json (write_targets)."""
    src = SHARD_CONFIG
    text = src.read_text()
    text = render.substitute(text, r'^(\s*prometheus_shard:\s*)"0"(\s*# shard-index)$', rf'\g<1>"{index}"\g<2>',
                             "shard label", src)
    text = render.substitute(text, r'^(\s*regex:\s*)"0"(\s*# shard-index)$', rf'\g<1>"{index}"\g<2>',
                             "hashmod keep regex", src)
    text = render.substitute(text, r"^(\s*-\s*)\.\./alerts/", rf"\g<1>{ALERTS_DIR}/", "rule_files entry", src)
    text = render.substitute(text, r"(url:\s*http://)[0-9.]+:\d+(/api/v1/receive)", rf"\g<1>{remote_write}\g<2>",
                             "remote_write url", src)
    text = render.substitute(text, f'"{render.default_addr("alertmanager")}"', f'"{alertmanager}"',
                             "Alertmanager target", src)
    if interval is not None:
        text = render.substitute(text, r"^(\s*(?:scrape|evaluation)_interval:\s*)\S+$", rf"\g<1>{interval}",
                                 "global intervals", src)
    conf_dir.mkdir(parents=True, exist_ok=True)
    path = conf_dir / f"prometheus-shard-{index}.yml"
    path.write_text(f"# Generated by ernie-otel from {src} (shard {index} of {SHARDS}); edit that file.\n{text}")
    return path


def write_targets(conf_dir: Path, name: str, addresses: Sequence[str]) -> Path:
    """conf_dir/fleet-targets/<name>.json, a file_sd file the shards read. ``name`` must match one
    of deploy/prometheus-shard.yml's globs: ernie-serve-*, prometheus-shard-*, thanos-*."""
    sd_dir = conf_dir / "fleet-targets"
    sd_dir.mkdir(parents=True, exist_ok=True)
    path = sd_dir / f"{name}.json"
    tmp = path.with_suffix(".tmp")  # Prometheus re-reads the file: never let it see half of one
    tmp.write_text(json.dumps([{"targets": list(addresses)}]))
    tmp.replace(path)
    return path


def prometheus_shard_args(binary: str, config: Path, port: int, data: Path) -> list[str]:
    return [
        binary, f"--config.file={config}", f"--web.listen-address={HOST}:{port}",
        f"--storage.tsdb.path={data}", f"--storage.tsdb.retention.time={LOCAL_RETENTION}",
        "--enable-feature=exemplar-storage", "--log.level=warn",
    ]


