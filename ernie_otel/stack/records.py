"""Processes that outlive the command that started them: what ``stack up`` writes down in
``stack.json`` so that ``status`` and ``down``, from another shell, find exactly those processes.

Pids get reused, so a record keeps the start time and command line as well, and nothing is ever
signalled unless /proc still shows that very process. Linux only (reads /proc).
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .procs import signal_process


class StackError(Exception):
    """Something the user must act on; the message says what."""


@dataclass
class Record:
    """What stack.json keeps per started process: enough to find it again, and to not kill a stranger."""

    pid: int
    start_ticks: int
    cmdline: list[str]
    log: str
    health_url: str | None
    started_at: float = field(default_factory=time.time)


def proc_stat(pid: int, tid: int | None = None) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks) of pid (or of its thread tid), or None if there
    is no such process or thread."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    try:
        raw = Path(path).read_text()
    except (OSError, ValueError):
        return None
    # comm (field 2) may contain spaces and parentheses: split after its closing paren.
    rest = raw[raw.rindex(")") + 2:].split()
    return rest[0], int(rest[19])


def proc_cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def record_of(proc: subprocess.Popen[bytes], cmdline: list[str], log: Path, health_url: str | None) -> Record:
    stat = proc_stat(proc.pid)
    return Record(proc.pid, stat[1] if stat else 0, cmdline, str(log), health_url)


def process_matches(record: Record) -> bool:
    """Whether record.pid is still the process we started: alive (not a zombie), the same start
    time, and a command line that ends with the arguments we launched it with. Only the
    arguments, not argv[0]: a script's shebang puts its interpreter in front, and
    opentelemetry-instrument execs `python ernie-serve ...` in its own place."""
    stat = proc_stat(record.pid)
    if stat is None or stat[0] in ("Z", "X") or stat[1] != record.start_ticks:
        return False
    current = proc_cmdline(record.pid) or []
    tail = record.cmdline[1:]
    return bool(tail) and current[-len(tail):] == tail


def process_gone(record: Record) -> bool:
    """Whether nothing of the recorded process is left. Not the same as ``not process_matches``:
    a thread-group leader shows as a zombie as soon as it exits, while its other threads are still
    exiting and still hold the process' files -- its listening sockets included, for a moment
    that a loaded machine stretches. Only when every thread is gone is its port free again."""
    stat = proc_stat(record.pid)
    if stat is None or stat[1] != record.start_ticks:
        return True
    if stat[0] not in ("Z", "X"):
        return False
    try:
        threads = [int(t.name) for t in Path(f"/proc/{record.pid}/task").iterdir()]
    except (OSError, ValueError):
        return True
    for tid in threads:
        thread = proc_stat(record.pid, tid)  # None: that thread is gone
        if thread is not None and thread[0] not in ("Z", "X"):
            return False
    return True


def wait_gone(record: Record, timeout: float) -> bool:
    """Wait (at most ``timeout`` s) until process_gone(record); returns whether it is."""
    return _wait_gone(record, None, timeout)


def stop_recorded(record: Record, proc: subprocess.Popen[bytes] | None, timeout: float, title: str,
                  say: Callable[[str], None]) -> bool:
    """SIGTERM to the recorded process' group, SIGKILL after `timeout`. Returns whether a process
    was stopped; a pid that is no longer ours is left alone (and said so). `proc`: our own
    Popen of it, if this process started it."""
    if proc is not None and proc.pid != record.pid:
        # Our Popen of an earlier run: the component was restarted since (by another `stack up`
        # or the supervisor). Waiting on it would return at once, before the recorded one is gone.
        proc.poll()  # reap it
        proc = None
    # A child of this very process is ours beyond doubt (e.g. stopping one that failed to start).
    owned = proc is not None and proc.poll() is None
    if not owned and not process_matches(record):
        stat = proc_stat(record.pid)
        if stat is not None and stat[0] not in ("Z", "X"):
            say(f"{title}: pid {record.pid} is now {' '.join(proc_cmdline(record.pid) or ['?'])!r}, "
                "not the process the stack started; leaving it alone")
        if proc is not None:
            proc.poll()  # reap our own zombie
        return False
    signal_process(record.pid, signal.SIGTERM)
    if not _wait_gone(record, proc, timeout):
        say(f"{title} (pid {record.pid}) ignored SIGTERM for {timeout:.0f}s; sending SIGKILL")
        signal_process(record.pid, signal.SIGKILL)
        _wait_gone(record, proc, 5.0)
    return True


def _wait_gone(record: Record, proc: subprocess.Popen[bytes] | None, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None:
            if proc.poll() is not None:
                return True
        elif process_gone(record):
            return True
        time.sleep(0.1)
    return False


class RecordFile:
    """stack.json: the records plus what ``status`` prints (ports, URLs); written atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def read_data(self) -> dict[str, Any]:
        """The whole file; {} when there is none."""
        try:
            data: dict[str, Any] = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, json.JSONDecodeError) as exc:
            raise StackError(f"{self.path} is unreadable ({exc}); remove it after checking "
                             "that no stack processes are left (ps -ef)") from None
        return data

    def read(self) -> dict[str, Record]:
        return {name: Record(**rec) for name, rec in self.read_data().get("components", {}).items()}

    def write(self, records: Mapping[str, Record], header: Mapping[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {**header, "components": {name: vars(rec) for name, rec in records.items()}}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        tmp.replace(self.path)

    def set(self, name: str, record: Record | None, header: Mapping[str, Any]) -> None:
        """Add, replace or (None) drop one record; the file goes when the last record does."""
        with self._lock:
            records = self.read()
            if record is None:
                records.pop(name, None)
            else:
                records[name] = record
            if records:
                self.write(records, header)
            else:
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
