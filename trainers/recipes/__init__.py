"""The recipes: one YAML file per stage of each paper's training recipe, shipped in the package.

`tinylmm train --config base_align` finds `base_align.yaml` here by name (a path works too);
`tinylmm recipes` lists them.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import yaml

RECIPES_DIR = Path(__file__).resolve().parent


def available() -> list[str]:
    """Names of the packaged recipes (file names without `.yaml`)."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def recipe_path(name_or_path: str | os.PathLike) -> Path:
    """A recipe file: an existing path as it is, else a packaged recipe by name (`base_align`)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    packaged = RECIPES_DIR / f"{path.name.removesuffix('.yaml')}.yaml"
    if path.parent == Path(".") and packaged.is_file():
        return packaged
    raise FileNotFoundError(
        f"recipe {os.fspath(name_or_path)!r} is neither a file nor a packaged recipe; packaged recipes: "
        f"{', '.join(available())} (`tinylmm recipes` describes them)."
    )


def load(name_or_path: str | os.PathLike) -> dict:
    return yaml.safe_load(recipe_path(name_or_path).read_text()) or {}


def summary(name: str) -> str:
    """One line: the stage, what trains, and at which learning rates."""
    r = load(name)
    trains = ", ".join(r.get("train_modules", ["all"]))
    if r.get("use_lora"):
        trains = f"LoRA on {', '.join(r.get('lora_modules', ['language_model']))}; {trains} in full"
    rates = [f"lr {r.get('learning_rate', '?'):g}" if "learning_rate" in r else "lr (default)"]
    rates += [f"{module} {lr:g}" for module, lr in (r.get("module_lrs") or {}).items()]
    stage = f"{r.get('recipe', '?')}/{r.get('stage', '?')}"
    return f"{name:<22} {stage:<22} from {r.get('init_stage', '?'):<22} trains {trains} ({', '.join(rates)})"


# -- the CLI subcommand ------------------------------------------------------------------------------


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    subparsers.add_parser(
        "recipes",
        help="list the packaged recipes: stage, what trains, learning rates",
        description="List the recipes shipped with tinylmm. Train one with `tinylmm train --config NAME`.",
        epilog="example:\n  tinylmm recipes\n  tinylmm train --config base_align --output_dir out/align",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def run(args: argparse.Namespace) -> int:
    for name in available():
        print(summary(name))
    return 0
