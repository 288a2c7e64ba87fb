"""A stack that heals: ``up`` on a partly running stack, ``restart NAME``, and ``--supervise``.

The machinery on throwaway components (Python's http.server) first, then the real pipeline: the
Collector and Jaeger SIGKILLed under light load, while clients see no error; ``up`` brings back
only those two, and metrics and traces flow again.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
from e2e_client import E2EStack, wait_for
from helpers import free_ports, http_get
from test_stack import static_server

from ernie_otel import names
from ernie_otel.stack import Stack, StackError, process_gone, process_matches

COMPS = [static_server(0), static_server(1)]


def _kill(stack: Stack, *component: str) -> dict[str, int]:
    records = stack.read_records()
    for name in component:
        os.killpg(records[name].pid, signal.SIGKILL)
    # Gone, every thread: a zombie leader's threads may still hold its listening socket.
    wait_for(lambda: all(process_gone(records[n]) for n in component), 10, f"{component} to die")
    return {name: rec.pid for name, rec in records.items()}


def test_up_heals_only_what_is_missing_and_restart_one(tmp_path: Path) -> None:
    lines: list[str] = []
    stack = Stack(tmp_path, components=COMPS, ports=free_ports(["static_0", "static_1"]), say=lines.append)
    stack.up()
    try:
        before = _kill(stack, "static_0")
        healed = Stack.from_state(tmp_path, components=COMPS, say=lines.append)
        assert healed.up() == ["static_0"]
        after = {name: rec.pid for name, rec in stack.read_records().items()}
        assert after["static_1"] == before["static_1"], "a healthy component was touched"
        assert after["static_0"] != before["static_0"]
        assert http_get(f"{stack.url('static_0')}/")[0] == 200
        assert any("already running, left alone: static server 1" in line for line in lines), lines

        healed.restart("static_1")
        again = {name: rec.pid for name, rec in stack.read_records().items()}
        assert again["static_0"] == after["static_0"] and again["static_1"] != after["static_1"]
        assert all(st["alive"] and st["healthy"] for st in stack.status().values())
        with pytest.raises(StackError, match="unknown component"):
            healed.restart("nope")
    finally:
        stack.down()


def test_supervise_restarts_an_exited_component_with_backoff(tmp_path: Path) -> None:
    lines: list[str] = []
    stack = Stack(tmp_path, components=COMPS, ports=free_ports(["static_0", "static_1"]), say=lines.append)
    stack.up()
    stop = threading.Event()
    supervisor = threading.Thread(target=stack.supervise, args=(stop.is_set,),
                                  kwargs={"poll_s": 0.2, "wait": stop.wait}, daemon=True)
    supervisor.start()
    try:
        first = _kill(stack, "static_1")["static_1"]
        record = wait_for(lambda: (r := stack.read_records().get("static_1")) and r.pid != first
                          and process_matches(r) and r, 30, "the supervisor to restart static server 1")
        assert http_get(f"{stack.url('static_1')}/")[0] == 200
        assert any("static server 1 is not running: restarting it" in line for line in lines), lines
        # Said once start() returns, which can be just after the new record appears: wait, not race.
        wait_for(lambda: any("next restart no sooner than 1s" in line for line in lines), 30, "the back-off line")
        # Killed again at once: the back-off doubles rather than restarting in a tight loop.
        _kill(stack, "static_1")
        wait_for(lambda: any("next restart no sooner than 2s" in line for line in lines), 30, "a doubled back-off")
        wait_for(lambda: (r := stack.read_records().get("static_1")) and r.pid != record.pid
                 and process_matches(r), 30, "a second restart")
    finally:
        stop.set()
        supervisor.join(timeout=30)
        stack.down()
    assert not supervisor.is_alive()


# --------------------------------------------------------------------------- the real pipeline
class LightLoad:
    """A few chat requests a second from one thread, every answer kept."""

    def __init__(self, e2e: E2EStack) -> None:
        self.e2e = e2e
        self.statuses: list[int] = []
        self.trace_ids: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            r = self.e2e.chat(max_tokens=4)
            self.statuses.append(r.status)
            if r.trace_id:
                self.trace_ids.append((time.time(), r.trace_id))

    def __enter__(self) -> LightLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


@pytest.mark.integration
@pytest.mark.parametrize("killed", [("collector", "jaeger"), ("prometheus",), ("alertmanager", "webhook_sink")],
                         ids="+".join)
def test_killed_components_heal_under_load(e2e_stack: E2EStack, killed: tuple[str, ...]) -> None:
    """Every component but ernie-serve itself (whose death clients do see: requests in flight)."""
    e2e, stack = e2e_stack, e2e_stack.stack
    collector_count = f"sum({names.REQUESTS.prom_name}{{{e2e.via_collector}}})"
    with LightLoad(e2e) as load:
        wait_for(lambda: len(load.statuses) >= 5 or None, 60, "the load to run")
        before = _kill(stack, *killed)
        killed_at = time.time()
        time.sleep(3)  # requests keep coming while part of the pipeline behind ernie-serve is gone
        lines: list[str] = []
        healed = Stack.from_state(stack.state_dir, bin_dir=stack.bin_dir, say=lines.append)
        assert sorted(healed.up()) == sorted(killed)
        after = {name: rec.pid for name, rec in stack.read_records().items()}
        for name in set(before) - set(killed):
            assert after[name] == before[name], f"{name} was restarted"
        healed_at = time.time()
        # Metrics resume: the Collector path counts requests again (a new process: its series start over).
        seen = e2e.scalar(collector_count) or 0.0
        wait_for(lambda: (e2e.scalar(collector_count) or 0.0) > seen or None, 90,
                 "requests counted through the healed Collector")
        # Traces resume: a request made after the heal is in the new Jaeger.
        wait_for(lambda: any(t > healed_at + 1 for t, _ in load.trace_ids) or None, 30, "a request after the heal")
        fresh = next(tid for t, tid in load.trace_ids if t > healed_at + 1)
        e2e.wait_trace(fresh, min_spans=2, timeout=60)
    # Nothing lost in the metrics: ernie-serve exports cumulative totals (and Prometheus keeps its
    # TSDB), so the Collector path counts every request ever sent, those made meanwhile included.
    wait_for(lambda: e2e.scalar(collector_count) == e2e.sent or None, 90,
             f"the Collector path to count all {e2e.sent} requests sent")
    assert load.statuses and set(load.statuses) == {200}, (
        f"clients saw errors: {sorted(set(load.statuses))}\n{e2e.logs('ernie_serve')}")
    assert any(t > killed_at for t, _ in load.trace_ids), "no request was made while the components were down"
    print(f"heal {'+'.join(killed)}: {len(load.statuses)} requests, all 200; healed in "
          f"{healed_at - killed_at:.1f}s", file=sys.stderr)


def test_restart_without_a_stack_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ernie_otel.stack.cli import main

    assert main(["restart", "collector", "--state-dir", str(tmp_path)]) == 1
    assert "no stack recorded" in capsys.readouterr().err
