"""``ernie-otel stack``: the whole pipeline as local processes, on the default ports of ernie_otel/ports.py.

    ernie-otel stack up [--load] [--foreground | --supervise] [--model tiny|DIR] [--state-dir DIR] [--replicas N]
        [--fleet] [--trace-store badger|opensearch]
    ernie-otel stack restart NAME [--state-dir DIR]
    ernie-otel stack status [--state-dir DIR]
    ernie-otel stack down [--state-dir DIR]

``up`` on a partly running stack starts only what is missing; ``--supervise`` stays attached and
restarts a component that exits, with back-off.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from ..ports import FLEET_PORTS, HOST, MAX_REPLICAS, REPLICA_BASE_PORT, REPLICA_STRIDE
from . import bad_requests
from .core import STACK_DIR_ENV, Stack
from .fleet import TRACE_STORES
from .procs import log_tail
from .records import StackError, process_matches


def _print_status(stack: Stack) -> int:
    status = stack.status()
    if not status:
        print(f"no stack recorded in {stack.state_dir}")
        return 3
    print(f"stack in {stack.state_dir}:")
    for name, st in status.items():
        state = "running" if st["alive"] else "NOT RUNNING"
        health = {True: "healthy", False: f"UNHEALTHY {st['detail']}", None: ""}[st["healthy"]]
        print(f"  {stack.title(name):<24} pid {st['pid']:<8} {state:<12} {health}")
    ok = all(st["alive"] and st["healthy"] for st in status.values())
    if ok:
        for key, url in stack.urls.items():
            print(f"  {key:<20} {url}")
    return 0 if ok else 1


def _foreground(stack: Stack, supervise: bool = False) -> int:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if supervise:
        stack.say("supervising in the foreground: a component that exits is restarted; Ctrl-C stops everything")
        stack.supervise(stop.is_set, wait=stop.wait)
    else:
        stack.say("running in the foreground; Ctrl-C stops everything")
    reported: set[str] = set()
    while not stop.wait(2.0):
        for name, rec in stack.read_records().items():
            if name not in reported and not process_matches(rec):
                reported.add(name)
                stack.say(f"{stack.title(name)} exited unexpectedly; last lines of {rec.log}:\n"
                          f"{log_tail(Path(rec.log))}")
    stack.say("stopping ...")
    stack.down()
    stack.say("stopped")
    return 0


def _replicas(text: str) -> int:
    # argparse turns the ValueError into one usage line and exit 2: a bad --replicas never starts anything.
    value = int(text)
    if not 1 <= value <= MAX_REPLICAS:
        raise argparse.ArgumentTypeError(f"must be 1..{MAX_REPLICAS}, not {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ernie-otel stack", description=(__doc__ or "").split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    state_help = f"state, logs and pids (default ${STACK_DIR_ENV} or <repo>/.stack)"
    up = sub.add_parser("up", help="start the whole stack and leave it running")
    up.add_argument("--load", action="store_true", help="also drive steady load (plus some bad requests)")
    up.add_argument("--foreground", action="store_true", help="stay attached; Ctrl-C or SIGTERM stops it all")
    up.add_argument("--supervise", action="store_true",
                    help="stay attached and restart a component that exits (with back-off); implies --foreground")
    up.add_argument("--model", default="tiny", help="'tiny' (built-in random-weight ERNIE-4.5) or a model dir")
    up.add_argument("--state-dir", type=Path, default=None, help=state_help)
    up.add_argument("--replicas", type=_replicas, default=1, metavar="N",
                    help=f"ernie-serve replicas (1..{MAX_REPLICAS}; replica i on API port "
                         f"{REPLICA_BASE_PORT}+{REPLICA_STRIDE}*i); N > 1 implies --fleet")
    up.add_argument("--fleet", action="store_true",
                    help="the fleet metrics profile: 2 Prometheus shards + Thanos (query on "
                         f"{HOST}:{FLEET_PORTS['thanos_query_http']}), even with one replica")
    up.add_argument("--trace-store", choices=TRACE_STORES, default="badger",
                    help="where Jaeger keeps traces: its badger directory, or (fleet only) an OpenSearch "
                         "cluster, one JVM per node: data nodes on "
                         f"{HOST}:{FLEET_PORTS['opensearch_http']} and +10, a tie-breaker on +20")
    for name, text in (("status", "what runs, and whether it is healthy"), ("down", "stop what `up` started")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--state-dir", type=Path, default=None, help=state_help)
    restart = sub.add_parser("restart", help="stop one component and start it again (the rest keeps running)")
    restart.add_argument("name", help="component name, as `status` lists it (e.g. collector, jaeger)")
    restart.add_argument("--state-dir", type=Path, default=None, help=state_help)
    return parser


def main(argv: list[str]) -> int:
    if argv[:1] == ["bad-requests"]:
        # Internal (the --load helper); argparse's REMAINDER would not pass its --options through.
        return bad_requests.main(argv[1:])
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "up" and args.trace_store != "badger" and not (args.fleet or args.replicas > 1):
        parser.error(f"--trace-store {args.trace_store} needs the fleet profile (--fleet or --replicas N > 1)")
    try:
        if args.command == "status":
            return _print_status(Stack.from_state(args.state_dir))
        if args.command == "down":
            stack = Stack.from_state(args.state_dir)
            if not stack.read_records():
                print(f"nothing recorded in {stack.state_dir}; nothing to stop")
                return 0
            stack.down()
            stack.say("stopped")
            return 0
        if args.command == "restart":
            stack = Stack.from_state(args.state_dir)
            if not stack.read_records():
                raise StackError(f"no stack recorded in {stack.state_dir}: `ernie-otel stack up` first")
            stack.restart(args.name)
            return 0
        stack = Stack(args.state_dir, model=args.model, load=args.load, replicas=args.replicas, fleet=args.fleet,
                      trace_store=args.trace_store)
        if stack.running():  # heal a partly running stack on the ports, model and profile it has
            recorded = Stack.from_state(args.state_dir, load=args.load)
            if recorded.model != stack.model:
                raise StackError(f"the stack in {stack.state_dir} runs model {recorded.model!r}, not "
                                 f"{stack.model!r}; `ernie-otel stack down` first to change it")
            recorded.load = recorded.load or args.load
            stack = recorded
        stack.say(f"state, logs and pids in {stack.state_dir}")
        try:
            stack.up()
        except KeyboardInterrupt:
            return 130
        stack.print_urls()
        if args.foreground or args.supervise:
            return _foreground(stack, supervise=args.supervise)
        return 0
    except StackError as exc:
        print(f"ernie-otel stack: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
