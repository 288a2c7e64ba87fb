"""Starting, watching and stopping processes: the one copy the stack, the tests and the benchmarks share.

Free ports, HTTP probes, waiting until a process answers its health URL, and a handle
(:class:`Running`) for a child process with its own log. Stdlib only. Processes that must outlive
the Python process that started them (``ernie-otel stack up``) are tracked by records.py instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..ports import DEFAULT_PORTS, HOST

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
# ernie-serve and the Go servers stop within a second or two; anything slower gets SIGKILL.
STOP_TIMEOUT_S = 15.0
# How often a long wait says it is still waiting (with the last answer it got).
NOTE_EVERY_S = 5.0


class NotHealthyError(RuntimeError):
    """A process exited, or did not answer its health URL in time; the message says which, with its log."""


# ----------------------------------------------------------------------------------- ports
def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


# Below the kernel's ephemeral range: a port the OS hands out for bind(0) is also what it hands to
# outgoing connections (gRPC clients, health polls), which took a picked port before its server
# bound it in CI. Ports given out by this process are not given out twice.
_PICK_RANGE = (20000, _ephemeral_low() - 1)
_given: set[int] = set()
_rng = random.SystemRandom()  # not the seedable global one: tests seed that


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now, outside the ephemeral range, never given out
    twice by this process (falls back to the OS's pick)."""
    low, high = _PICK_RANGE
    for _ in range(200 if high > low else 0):
        port = _rng.randint(low, high)
        if port not in _given and port_free(port):
            _given.add(port)
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def free_ports(keys: Iterable[str] = DEFAULT_PORTS) -> dict[str, int]:
    """A distinct free port for every key (default: every listener of the single-server stack),
    so a test's or benchmark's processes never collide with a running stack on the default ports."""
    wanted = list(keys)
    ports: dict[str, int] = {}
    while len(ports) < len(wanted):
        port = free_port()
        if port not in ports.values():
            ports[wanted[len(ports)]] = port
    return ports


def port_free(port: int, host: str = HOST) -> bool:
    """Whether a server could listen on host:port now. SO_REUSEADDR as servers use it, so only a
    listener (not a TIME_WAIT leftover) counts as taken."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


# ------------------------------------------------------------------------------------ HTTP
def http_request(url: str, data: bytes | None = None, headers: Mapping[str, str] | None = None,
                 timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """GET (or POST when there is a body); (status, lower-cased headers, body) for any HTTP
    status. Raises OSError when nothing answers."""
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET",
                                     headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()


def http_get(url: str, timeout: float = 5.0, headers: Mapping[str, str] | None = None) -> tuple[int, str]:
    """GET url; (status, body) for any HTTP status, OSError if nothing answers."""
    status, _, body = http_request(url, headers=headers, timeout=timeout)
    return status, body.decode("utf-8", "replace")


def http_post_json(url: str, body: bytes, timeout: float = 5.0) -> tuple[int, str]:
    """POST a JSON body (e.g. OTLP/HTTP JSON); (status, body) for any HTTP status."""
    status, _, data = http_request(url, body, {"Content-Type": "application/json"}, timeout)
    return status, data.decode("utf-8", "replace")


def http_status(url: str, timeout: float = 2.0) -> tuple[int | None, str]:
    """(HTTP status, first bytes of the body); (None, reason) when nothing answers. Never raises."""
    try:
        status, body = http_get(url, timeout=timeout)
    except (OSError, ValueError) as err:
        return None, str(getattr(err, "reason", err))
    return status, body[:300]


def _failed_load(body: str) -> str | None:
    """ernie-serve's /health says {"status": "failed", "error": ...} when the model cannot load:
    waiting on longer cannot help."""
    with contextlib.suppress(ValueError, AttributeError):
        state = json.loads(body)
        if state.get("status") == "failed":
            return str(state.get("error") or "no reason given")
    return None


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"<no log at {path}>"
    return "\n".join(text.splitlines()[-lines:])


def wait_http(url: str | None, *, timeout: float, proc: subprocess.Popen[bytes] | None = None,
              status: int = 200, headers: Mapping[str, str] | None = None, what: str | None = None,
              log_path: Path | None = None, say: Callable[[str], None] | None = None) -> str:
    """Poll url until it answers `status`; returns the body. url None: the process staying alive
    for a second counts (a load generator has nothing to ask). Raises NotHealthyError, with the
    last lines of `log_path`, when `proc` exits, ernie-serve reports a failed model load, or
    `timeout` passes; `say` hears every few seconds what the last answer was."""
    what = what or url or "process"
    t0 = time.monotonic()
    next_note = t0 + NOTE_EVERY_S
    last = "no answer yet"
    while True:
        code = proc.poll() if proc is not None else None
        if code is not None:
            raise NotHealthyError(f"{what} exited with code {code} while starting{_logs(log_path)}")
        if url is None:
            if time.monotonic() - t0 >= 1.0:
                return ""
        else:
            try:
                got, body = http_get(url, timeout=2.0, headers=headers)
            except (OSError, ValueError) as err:
                last = str(getattr(err, "reason", err))
            else:
                if got == status:
                    return body
                last = f"HTTP {got}: {body.strip()[:120]}"
                failed = _failed_load(body)
                if failed is not None:
                    raise NotHealthyError(f"{what}: model load failed: {failed}{_logs(log_path)}")
        now = time.monotonic()
        if now - t0 >= timeout:
            raise NotHealthyError(f"{what} not healthy after {timeout:.0f}s ({url}: {last}){_logs(log_path)}")
        if say is not None and now >= next_note:
            say(f"  ... waiting for {what} ({now - t0:.0f}s): {last}")
            next_note = now + NOTE_EVERY_S
        time.sleep(0.25)


def _logs(log_path: Path | None) -> str:
    return f". Last lines of {log_path}:\n{log_tail(log_path)}" if log_path is not None else ""


# ------------------------------------------------------------------------------- processes
@dataclass
class Running:
    """A child process writing to its own log. ``url`` and ``ports``: where it listens, for callers."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    url: str = ""
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "<no log>"

    def wait_http(self, url: str, timeout: float, status: int = 200,
                  headers: Mapping[str, str] | None = None) -> str:
        """wait_http() for this process: fails at once if it exits, with its log."""
        return wait_http(url, timeout=timeout, proc=self.proc, status=status, headers=headers, what=self.name,
                         log_path=self.log_path)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM (to its process group if it leads one), SIGKILL after `timeout`; reaps it."""
        if self.proc.poll() is not None:
            return
        signal_process(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            signal_process(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)


def signal_process(pid: int, sig: signal.Signals) -> None:
    """Signal a process group leader's whole group (start_new_session), so helpers it spawned go
    too; otherwise just the pid. A process that is already gone is no error."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def spawn(name: str, argv: Sequence[str | os.PathLike[str]], log_path: Path,
          env: Mapping[str, str | None] | None = None, *, cwd: Path = REPO_ROOT, detach: bool = False,
          append: bool = False) -> Running:
    """Start argv with stdout and stderr to log_path, on top of this process' environment (an env
    value of None removes that variable, so a child sees defaults whatever the caller's
    environment holds). ``detach``: its own session, so it outlives us and a group signal
    reaches its children. ``append``: keep the log's earlier runs, under a header line."""
    args = [str(a) for a in argv]
    full_env = {k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab" if append else "wb") as log:
        if append:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(args)}\n".encode())
            log.flush()
        proc = subprocess.Popen(args, cwd=cwd, env=full_env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=detach)
    return Running(name, proc, log_path)


@contextlib.contextmanager
def running(name: str, argv: Sequence[str | os.PathLike[str]], log_path: Path,
            env: Mapping[str, str | None] | None = None, *, cwd: Path = REPO_ROOT) -> Iterator[Running]:
    """spawn() for the duration of the block; always stopped at its end."""
    proc = spawn(name, argv, log_path, env, cwd=cwd)
    try:
        yield proc
    finally:
        proc.stop()


@contextlib.contextmanager
def stopping(procs: list[Running]) -> Iterator[list[Running]]:
    """Stops every process the block appended to `procs`, last started first."""
    try:
        yield procs
    finally:
        for proc in reversed(procs):
            proc.stop()
