"""`tinylmm convert SRC DST [--to tinylmm|llava|llava_onevision]` and `convert()`, the same as a function."""

from __future__ import annotations

import argparse
import logging
import os

from .source import ConversionError, kind_of, locate, read_config
from .target import write_folder

logger = logging.getLogger(__name__)

TARGETS = ("tinylmm", "llava", "llava_onevision")


def load_tinylmm(folder: str):
    """(model, processor) of a tinylmm folder, through the Auto classes."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    import modeling_tinylmm  # noqa: F401  (registers the Auto classes)
    import processors  # noqa: F401

    model = AutoModelForImageTextToText.from_pretrained(folder, dtype="auto")
    return model.eval(), AutoProcessor.from_pretrained(folder)


def _to_tinylmm(folder: str, kind: str, source: str, chat_template: str | None):
    if kind == "llava":
        from .llava import to_tinylmm
    elif kind == "llava_onevision":
        from .onevision import to_tinylmm
    else:
        from .tinyllava import to_tinylmm
    return to_tinylmm(folder, source, chat_template=chat_template)


def convert(
    src: str | os.PathLike, dst: str | os.PathLike, to: str = "tinylmm", chat_template: str | None = None
) -> str:
    """Convert the checkpoint `src` (a Hub id or a local folder; its kind read from config.json) into `dst`.

    `to="tinylmm"` reads a transformers LLaVA, LLaVA-OneVision or TinyLLaVA_Factory checkpoint and writes a
    tinylmm folder. `to="llava"` / `"llava_onevision"` writes a folder that transformers' own classes load
    (and vLLM serves natively), from a tinylmm folder or from any readable source through tinylmm.
    `chat_template` (into tinylmm): None for tinylmm's template of the source's family, "source" to keep the
    source's template verbatim, or a template name / Jinja string. Returns `dst`.
    """
    if to not in TARGETS:
        raise ConversionError(f"--to must be one of {', '.join(TARGETS)}; got {to!r}.")
    source, dst = os.fspath(src), os.fspath(dst)
    folder = locate(source)
    kind = kind_of(read_config(folder), folder)
    if to == "tinylmm":
        if kind == "tinylmm":
            raise ConversionError(
                f"{source} is already a tinylmm checkpoint; convert it --to llava or --to llava_onevision."
            )
        model, processor, card = _to_tinylmm(folder, kind, source, chat_template)
        return write_folder(model, processor, dst, card)
    if kind == "tinylmm":
        model, processor = load_tinylmm(folder)
    else:
        model, processor, _ = _to_tinylmm(folder, kind, source, chat_template)
    if to == "llava":
        from .llava import from_tinylmm
    else:
        from .onevision import from_tinylmm
    return from_tinylmm(model, processor, dst, source)


# -- the CLI subcommand ----------------------------------------------------------------------------------


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="convert LLaVA / LLaVA-OneVision / TinyLLaVA checkpoints to tinylmm, and tinylmm to LLaVA(-OneVision)",
        description="Convert a checkpoint (a Hub id or a local folder; its kind is read from config.json). Into "
        "tinylmm: transformers' llava and llava_onevision, and TinyLLaVA_Factory checkpoints (Hub format and "
        "training folders). Out of tinylmm: --to llava (CLIP/SigLIP + mlp2x_gelu, pad/resize/crop images) and "
        "--to llava_onevision (CLIP/SigLIP + mlp2x_gelu, AnyRes), which transformers loads without remote "
        "code and vLLM serves natively.",
        epilog="examples:\n"
        "  tinylmm convert llava-hf/llava-1.5-7b-hf checkpoints/llava15\n"
        "  tinylmm convert llava-hf/llava-onevision-qwen2-0.5b-ov-hf checkpoints/ov05\n"
        "  tinylmm convert tinyllava/TinyLLaVA-Phi-2-SigLIP-3.1B checkpoints/tinyllava\n"
        "  tinylmm convert out/sft exports/sft-llava --to llava\n"
        "  tinylmm convert out/onevision exports/ov --to llava_onevision",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("src", help="Hub id or folder of the checkpoint to convert")
    parser.add_argument("dst", help="folder to write")
    parser.add_argument("--to", default="tinylmm", choices=TARGETS, help="format to write (default: tinylmm)")
    parser.add_argument(
        "--chat_template",
        default=None,
        help="into tinylmm: default tinylmm's template of the source's family; 'source' keeps the source's "
        "template verbatim; or a template name / Jinja",
    )


def run(args: argparse.Namespace) -> int:
    dst = convert(args.src, args.dst, to=args.to, chat_template=args.chat_template)
    print(f"wrote {dst}")
    return 0
