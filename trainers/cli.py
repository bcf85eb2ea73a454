"""The `tinylmm` command. Each subcommand lives in its own module, which provides
`add_parser(subparsers)` and `run(args) -> int`; add one with a line in COMMANDS.

A subcommand that parses its own options (as `train` does, with TRL's parser) sets `passthrough=True` on
its parser's defaults and finds the rest of the command line in `args.argv`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "train": "trainers.train",
    "build": "trainers.build",
    "demo": "trainers.demo",
    "eval": "trainers.evaluation",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tinylmm", description="Small multimodal models on transformers + TRL."
    )
    subparsers = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}")
    modules = {name: importlib.import_module(path) for name, path in COMMANDS.items()}
    for module in modules.values():
        module.add_parser(subparsers)
    argv = list(sys.argv[1:] if argv is None else argv)
    args, rest = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help()
        return 1
    if getattr(args, "passthrough", False):
        args.argv = rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return modules[args.command].run(args)


if __name__ == "__main__":
    raise SystemExit(main())
