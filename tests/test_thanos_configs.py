"""The fleet metrics configs tested like code: promtool on the shard config and the fleet rules
(with their unit tests), and the contracts between deploy/, deploy/thanos/ and ernie_otel.ports.
Cheap: no Thanos binary needed (the test_thanos_fleet / test_thanos_tiers tests run it).
"""

from __future__ import annotations

import fnmatch
import json
import shutil
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from helpers import REPO_ROOT
from thanos_fleet import SHARD_CONFIG, THANOS_DIR, ReceivePorts, receive_args

from ernie_otel.ports import DEFAULT_PORTS, FLEET_STRIDE, fleet_port
from ernie_otel.stack import thanos

ALERTS = REPO_ROOT / "alerts"
FLEET_RULES = (ALERTS / "fleet-store.yml", ALERTS / "fleet-global.yml")
FLEET_RULE_TESTS = (ALERTS / "tests" / "fleet-store.test.yml", ALERTS / "tests" / "fleet-global.test.yml")


def _promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed (Debian package `prometheus`; scripts/setup.sh installs it)")
    return subprocess.run([promtool, *map(str, args)], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120, check=False, stdin=subprocess.DEVNULL)


def test_shard_config_passes_promtool() -> None:
    result = _promtool("check", "config", SHARD_CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr
    # Its rule files resolve: the per-instance ones and the store health, not the global ones.
    assert "fleet-store.yml" in result.stdout and "ernie-recording.yml" in result.stdout
    assert "fleet-global.yml" not in result.stdout


@pytest.mark.parametrize("rules", FLEET_RULES, ids=lambda p: p.name)
def test_fleet_rules_pass_promtool(rules: Path) -> None:
    result = _promtool("check", "rules", rules)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("tests", FLEET_RULE_TESTS, ids=lambda p: p.name)
def test_fleet_rule_unit_tests(tests: Path) -> None:
    result = _promtool("test", "rules", tests)
    assert result.returncode == 0, result.stdout + result.stderr


def test_fleet_rule_files_stay_out_of_the_single_server_glob() -> None:
    """deploy/prometheus.yml loads alerts/ernie-*.yml: a fleet rule file matched by it would run the
    global alerts on every single server, and the store alerts where no store exists."""
    single = yaml.safe_load((REPO_ROOT / "deploy" / "prometheus.yml").read_text())
    for pattern in single["rule_files"]:
        for rules in FLEET_RULES:
            assert not fnmatch.fnmatch(f"../alerts/{rules.name}", pattern), (rules, pattern)


def test_every_alert_has_severity_priority_and_text() -> None:
    for rules in FLEET_RULES:
        for group in yaml.safe_load(rules.read_text())["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    assert {"severity", "priority"} <= set(rule["labels"]), rule["alert"]
                    assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]


def test_shard_config_splits_by_hashmod_and_writes_to_the_router() -> None:
    text = SHARD_CONFIG.read_text()
    assert text.count("# shard-index") == 2, "shard k differs from shard 0 in exactly two marked places"
    config = yaml.safe_load(text)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    hashmod, keep = jobs["ernie-serve-direct"]["relabel_configs"][:2]
    assert hashmod == {"source_labels": ["__address__"], "modulus": 2, "target_label": "__tmp_shard",
                       "action": "hashmod"}
    assert keep == {"source_labels": ["__tmp_shard"], "regex": "0", "action": "keep"}
    assert config["global"]["external_labels"] == {"prometheus_shard": "0"}
    # Alerts lose the shard label so that both shards' copies are one alert at Alertmanager.
    assert {"action": "labeldrop", "regex": "prometheus_shard"} in config["alerting"]["alert_relabel_configs"]

    (remote,) = config["remote_write"]
    assert urlsplit(remote["url"]).netloc == f"127.0.0.1:{fleet_port('thanos_router_remote_write')}"
    (am,) = config["alerting"]["alertmanagers"]
    assert am["static_configs"][0]["targets"] == [f"127.0.0.1:{DEFAULT_PORTS['alertmanager']}"]
    # Every shard's web port (9091, 9101, ...) is clear of Alertmanager and the webhook sink.
    shard_ports = {fleet_port("prometheus_shard", k) for k in range(2)}
    assert not shard_ports & set(DEFAULT_PORTS.values())


def test_thanos_configs_use_the_port_table() -> None:
    hashring = json.loads((THANOS_DIR / "hashring.json").read_text())
    assert hashring[0]["endpoints"] == [f"127.0.0.1:{fleet_port('thanos_receive_grpc', k)}" for k in range(3)]
    rule_query = yaml.safe_load((THANOS_DIR / "rule-query.yml").read_text())
    assert rule_query[0]["static_configs"] == [f"127.0.0.1:{fleet_port('thanos_query_http')}"]
    rule_am = yaml.safe_load((THANOS_DIR / "rule-alertmanagers.yml").read_text())
    assert rule_am["alertmanagers"][0]["static_configs"] == [f"127.0.0.1:{DEFAULT_PORTS['alertmanager']}"]
    objstore = yaml.safe_load((THANOS_DIR / "objstore.yml").read_text())
    assert objstore["type"] == "FILESYSTEM"
    # The receivers' instance ranges (k = 0..2, +FLEET_STRIDE each) and the router's ports
    # collide with nothing else in the table.
    fleet = [fleet_port(key, k) for key in ("thanos_receive_grpc", "thanos_receive_http",
                                            "thanos_receive_remote_write", "thanos_receive_capnproto")
             for k in range(3)]
    others = [fleet_port(key) for key in ("thanos_router_grpc", "thanos_router_http", "thanos_router_remote_write",
                                          "thanos_router_capnproto", "thanos_query_http", "thanos_query_grpc",
                                          "thanos_store_grpc", "thanos_store_http", "thanos_compact_http",
                                          "thanos_rule_grpc", "thanos_rule_http")]
    everything = fleet + others + list(DEFAULT_PORTS.values())
    assert len(everything) == len(set(everything)), sorted(everything)
    assert FLEET_STRIDE == 10


def test_compactor_selectors_are_disjoint() -> None:
    raw = yaml.safe_load((THANOS_DIR / "compact-raw-selector.yml").read_text())
    agg = yaml.safe_load((THANOS_DIR / "compact-1m-selector.yml").read_text())
    assert raw == [{"source_labels": ["tier"], "regex": "1m", "action": "drop"}]
    assert agg == [{"source_labels": ["tier"], "regex": "1m", "action": "keep"}]


def test_receive_args_bind_every_listener_to_loopback(tmp_path: Path) -> None:
    """Thanos defaults each listener to 0.0.0.0 -- capnproto included -- so each is set."""
    args = receive_args(Path("thanos"), ReceivePorts(), tmp_path, replica="r0")
    for flag in ("--grpc-address=", "--http-address=", "--remote-write.address=", "--receive.capnproto-address="):
        (value,) = [a.removeprefix(flag) for a in args if a.startswith(flag)]
        assert value.startswith("127.0.0.1:"), (flag, value)


def test_build_script_pins_the_version_and_tags() -> None:
    script = (THANOS_DIR / "build.sh").read_text()
    assert 'THANOS_VERSION="v0.42.4"' in script
    assert 'THANOS_TAGS="netgo,slicelabels"' in script
    assert script.count("=github.com/") + script.count("=capnproto.org/") >= 6
    result = subprocess.run(["bash", "-n", str(THANOS_DIR / "build.sh")], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stderr


def test_receivers_start_outside_their_tenant_prune_minute() -> None:
    """Thanos receive prunes tenants when the local minute of the day is a multiple of twice its max
    block duration, and panics if that meets its TSDB still opening (it exited 2 in CI at 12:00)."""
    def at(hour: int, minute: int, second: float) -> float:
        return time.mktime((2026, 11, 30, hour, minute, 0, 0, 0, -1)) + second

    delay = thanos.receive_start_delay
    # 2 h blocks: 00:00, 04:00, ... 12:00, 16:00, 20:00 are prune minutes.
    assert delay(now=at(12, 0, 20)) == pytest.approx(40)
    assert delay(now=at(16, 0, 0.5)) == pytest.approx(59.5)
    assert delay(now=at(11, 59, 50)) == pytest.approx(70)  # TSDB still opening when 12:00 comes
    assert delay(now=at(11, 59, 40)) == 0  # 20 s is time enough to open
    assert delay(now=at(12, 1, 0)) == 0
    assert delay(now=at(13, 0, 0)) == 0
    # 1 min blocks (the tests' bucket fleets): every even minute.
    assert delay(1, now=at(9, 2, 10)) == pytest.approx(50)
    assert delay(1, now=at(9, 3, 10)) == 0
    assert delay(1, now=at(9, 3, 55)) == pytest.approx(65)
