"""``ernie-otel``: the project's command group (tiny-model, stack, bench)."""

from __future__ import annotations

import sys

from .config import OneLineParser

SUBCOMMANDS = {
    "tiny-model": "build the small random-weight ERNIE-4.5 into DIR",
    "stack": "run the whole local stack: up | down | status",
    "bench": "OpenAI-compatible load generator with live progress",
}


def tiny_model_main(argv: list[str]) -> int:
    parser = OneLineParser(prog="ernie-otel tiny-model", description=SUBCOMMANDS["tiny-model"])
    parser.add_argument("dir", nargs="?", help="output directory (default: print the cached built-in model's path)")
    parser.add_argument("--size", default="tiny", choices=["tiny", "0.3b"],
                        help="tiny: demo/test sizes; 0.3b: the real ERNIE-4.5-0.3B configuration, random weights")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (default: %(default)s)")
    args = parser.parse_args(argv)
    from .tiny_model import build_tiny_model, ensure_tiny_model

    path = build_tiny_model(args.dir, size=args.size, seed=args.seed) if args.dir else ensure_tiny_model(args.size)
    print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
        print("usage: ernie-otel {" + ",".join(SUBCOMMANDS) + "} ...\n")
        for name, text in SUBCOMMANDS.items():
            print(f"  {name:<11} {text}")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    command, rest = argv[0], argv[1:]
    if command == "tiny-model":
        return tiny_model_main(rest)
    if command == "stack":
        from .stack import main as stack_main

        return stack_main(rest)
    from .bench import main as bench_main

    return bench_main(rest)


if __name__ == "__main__":
    sys.exit(main())
