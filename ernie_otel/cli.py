"""``ernie-otel``: the project's command group (tiny-model, stack, bench)."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ernie-otel", description="ERNIE-4.5 observability tools")
    sub = parser.add_subparsers(dest="command", required=True)

    tiny = sub.add_parser("tiny-model", help="build the small random-weight ERNIE-4.5 into DIR")
    tiny.add_argument("dir", nargs="?", help="output directory (default: print the cached built-in model's path)")
    tiny.add_argument("--size", default="tiny", choices=["tiny", "0.3b"],
                      help="tiny: demo/test sizes; 0.3b: the real ERNIE-4.5-0.3B configuration, random weights")
    tiny.add_argument("--seed", type=int, default=0)

    args = parser.parse_args(argv)
    if args.command == "tiny-model":
        from .tiny_model import build_tiny_model, ensure_tiny_model

        path = build_tiny_model(args.dir, size=args.size, seed=args.seed) if args.dir else ensure_tiny_model(args.size)
        print(path)
        return 0
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
