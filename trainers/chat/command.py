"""`tinylmm chat --model DIR|HUB_ID [--cli] [--port N] [--share]`: the subcommand."""

from __future__ import annotations

import argparse

from ..arguments import add_kebab_aliases
from .engine import ChatEngine, GenerationSettings

EXAMPLES = """examples:
  tinylmm chat --model tinylmm-demo/sft
  tinylmm chat --model checkpoints/base/sft --port 7861
  tinylmm chat --model tinylmm-demo/sft --cli
  printf '/image photo.png\\nwhat is in this image?\\n' | tinylmm chat --model tinylmm-demo/sft --cli
(the web app needs Gradio: pip install "tinylmm[chat]"; --cli needs nothing more)"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "chat",
        help="talk to a model: a web app on 127.0.0.1, or the terminal with --cli",
        description="Talk to a saved model (a folder, a LoRA checkpoint or a Hub id): attach images, ask, and "
        "read the reply as it is generated. The web app serves on 127.0.0.1 only, unless --share.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="model folder or Hub id")
    parser.add_argument("--cli", action="store_true", help="chat in the terminal instead of the browser")
    parser.add_argument("--port", type=int, default=None, help="web app port (default: a free one from 7860)")
    parser.add_argument(
        "--share", action="store_true", help="also serve through a public Gradio link (off by default)"
    )
    parser.add_argument("--max_new_tokens", type=int, default=256, help="longest reply, in tokens")
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default)")
    parser.add_argument(
        "--top_p", type=float, default=1.0, help="nucleus sampling mass (with temperature > 0)"
    )
    parser.add_argument("--device", default=None, help="cpu, cuda … (default: cuda when available)")
    parser.add_argument("--trust_remote_code", action="store_true", help="load the model with its own code")
    add_kebab_aliases(parser)


def run(args: argparse.Namespace) -> int:
    settings = GenerationSettings(args.max_new_tokens, args.temperature, args.top_p)
    if not args.cli:
        from .web import import_gradio

        import_gradio()  # before loading the model: say at once what to install
    engine = ChatEngine.load(args.model, device=args.device, trust_remote_code=args.trust_remote_code)
    if args.cli:
        from .terminal import chat

        return chat(engine, settings)
    from .web import launch

    launch(engine, port=args.port, share=args.share, settings=settings)
    return 0
