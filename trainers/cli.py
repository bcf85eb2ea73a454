"""The `tinylmm` command: a dispatcher. Each subcommand lives in the module named in COMMANDS, which provides
`add_parser(subparsers)` and `run(args) -> int`; add one with a line there.

A subcommand that parses its own options (as `train` does, with TRL's parser) sets `passthrough=True` on
its parser's defaults and finds the rest of the command line in `args.argv`. Logging is configured here,
once; an error prints one line naming the problem, and `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

COMMANDS = {
    "build": "trainers.build",
    "train": "trainers.train",
    "recipes": "trainers.recipes",
    "eval": "trainers.evaluation.harness",
    "demo": "trainers.demo.pipeline",
    "chat": "trainers.chat.command",
    "convert": "trainers.convert.command",
}
# Commands that report through logging at INFO by default; the rest print their own output.
_VERBOSE = {"build", "train"}


def configure_logging(command: str | None) -> None:
    default = "INFO" if command in _VERBOSE else "WARNING"
    logging.basicConfig(
        level=os.environ.get("TINYLMM_LOG_LEVEL", default), format="%(levelname)s %(name)s: %(message)s"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tinylmm", description="Small multimodal models on transformers + TRL."
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    subparsers = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}")
    modules = {name: importlib.import_module(path) for name, path in COMMANDS.items()}
    for module in modules.values():
        module.add_parser(subparsers)
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # accepted anywhere on the line, before or after the subcommand
    args, rest = parser.parse_known_args([a for a in argv if a != "--debug"])
    args.debug = debug
    if args.command is None:
        parser.print_help()
        return 1
    if getattr(args, "passthrough", False):
        args.argv = rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    configure_logging(args.command)
    try:
        return modules[args.command].run(args)
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("tinylmm: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # one line for the user; the traceback behind --debug
        if args.debug:
            raise
        message = str(err).strip() or type(err).__name__
        print(
            f"tinylmm {args.command}: error: {message} (run with --debug for the traceback)", file=sys.stderr
        )
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
