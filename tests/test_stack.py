"""The stack's machinery without the pipeline binaries: that a component is one table entry.

A throwaway component (Python's own http.server), in two instances made by one factory that takes
the instance index, goes up and down through the same Stack and supervisor as the real pipeline:
start order, health URL, port checks, records, status, down.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import free_port, free_ports, http_get

from ernie_otel.stack import Component, Stack, StackError, collector_env, jaeger_env, process_matches
from ernie_otel.stack.components import COMPONENTS, StackContext
from ernie_otel.stack.procs import port_free
from ernie_otel.stack.records import proc_stat, process_gone, record_of, wait_gone


def static_server(k: int) -> Component:
    """Instance k of a throwaway HTTP server: one table entry, its port key indexed by k."""
    key = f"static_{k}"
    return Component(
        f"static_{k}", f"static server {k}", 100 + k,
        command=lambda c: [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(c.ports[key]),
                           "--directory", str(c.state_dir)],
        ports={key: 0},  # no default worth having: every test gives it a free port
        health=lambda c: f"{c.url(key)}/",
        health_timeout=20.0,
    )


LEADER_EXITS_FIRST = """
import ctypes, socket, sys, threading, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen()
threading.Thread(target=time.sleep, args=(float(sys.argv[2]),)).start()
print("ready", flush=True)
sys.stdin.readline()
ctypes.CDLL(None).pthread_exit(None)  # the main thread (the group leader) exits; the other lives on
"""


def test_a_process_is_gone_only_with_its_last_thread(tmp_path: Path) -> None:
    """A thread-group leader is a zombie as soon as it exits, while its other threads still hold the
    process' sockets: CI once found a stopped http.server's port still taken right after `down`.
    So stopping waits for process_gone (every thread), not for the leader alone."""
    script = tmp_path / "leader_exits_first.py"
    script.write_text(LEADER_EXITS_FIRST)
    port = free_port()
    argv = [sys.executable, str(script), str(port), "1.5"]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().strip() == b"ready"
        record = record_of(proc, argv, tmp_path / "log", None)
        assert process_matches(record) and not process_gone(record)
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        deadline = time.monotonic() + 5
        while (proc_stat(proc.pid) or ("?",))[0] != "Z" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not process_matches(record), "the leader is a zombie: no longer 'our running process'"
        assert not process_gone(record) and not port_free(port), "but its thread still holds the port"
        assert wait_gone(record, 10)
        assert port_free(port)
    finally:
        proc.kill()
        proc.wait()


def exits_at_once(c: StackContext) -> list[str]:
    return [sys.executable, "-c", "import sys; print('cannot start: bad flag'); sys.exit(3)"]


def test_a_table_entry_is_all_a_component_needs(tmp_path: Path) -> None:
    comps = [static_server(1), static_server(0)]
    lines: list[str] = []
    stack = Stack(tmp_path / "state", components=comps, ports=free_ports(["static_0", "static_1"]),
                  say=lines.append)
    assert stack.component_names == ("static_0", "static_1"), "start order comes from the entries' order"
    stack.up()
    try:
        status = stack.status()
        assert set(status) == {"static_0", "static_1"}
        assert all(st["alive"] and st["healthy"] for st in status.values()), status
        for k in (0, 1):
            code, _ = http_get(f"{stack.url(f'static_{k}')}/")
            assert code == 200
        records = stack.read_records()
        # A second up starts nothing: the recorded processes still run (and are left alone).
        assert Stack(tmp_path / "state", components=comps, ports=stack.ports, say=lines.append).up() == []
        assert stack.read_records() == records
    finally:
        # From the state file alone, as `ernie-otel stack down` in another shell would.
        stopped = Stack.from_state(tmp_path / "state", components=comps, say=lines.append).down()
    assert stopped == ["static_1", "static_0"], "down goes in reverse start order"
    assert not any(process_matches(rec) for rec in records.values())
    assert all(port_free(port) for port in stack.ports.values() if port)
    assert stack.read_records() == {}
    assert any(line.startswith("static server 0 healthy after") for line in lines), lines


def test_a_component_that_exits_fails_with_its_log(tmp_path: Path) -> None:
    broken = Component("broken", "broken server", 200, exits_at_once)  # after static_0 is up
    stack = Stack(tmp_path, components=[static_server(0), broken], ports=free_ports(["static_0"]),
                  say=lambda _: None)
    with pytest.raises(StackError) as info:
        stack.up()
    message = str(info.value)
    assert "broken server exited with code 3 while starting" in message and "bad flag" in message, message
    assert stack.read_records() == {}, "what did start must be stopped again"
    assert port_free(stack.ports["static_0"])


def test_unknown_port_key_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown port names"):
        Stack(tmp_path, components=[static_server(0)], ports={"static_7": 1})


def test_collector_and_jaeger_env_come_from_the_port_map(tmp_path: Path) -> None:
    ports = free_ports()
    otel, jaeger = collector_env(ports), jaeger_env(ports, tmp_path / "jaeger")
    # The Collector exports spans to exactly where Jaeger listens for them.
    assert otel["OTELCOL_JAEGER_ENDPOINT"] == jaeger["JAEGER_OTLP_GRPC_ENDPOINT"]
    listened = {value.rsplit(":", 1)[-1] for value in (*otel.values(), *jaeger.values())}
    assert jaeger["JAEGER_BADGER_DIR"] == str(tmp_path / "jaeger")
    owned = {str(ports[key]) for comp in COMPONENTS if comp.name in ("collector", "jaeger") for key in comp.ports}
    assert owned <= listened, owned - listened


def test_the_stack_package_is_stdlib_only() -> None:
    """The supervisor and the webhook sink run before (and beside) everything else: importing them
    must not pull in OpenTelemetry, torch or a web framework."""
    code = ("import sys, ernie_otel.stack, ernie_otel.stack.webhook_sink, ernie_otel.stack.bad_requests; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'opentelemetry', 'torch', 'transformers', 'fastapi', 'yaml', 'httpx'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
