"""`tinylmm chat --model DIR|HUB_ID`: talk to a model, in the browser (a Gradio app on 127.0.0.1) or, with
`--cli`, in the terminal.

- `engine.py`: the one engine both use: a loaded model, a conversation with its images, and a reply streamed
  token by token (transformers' `TextIteratorStreamer`), stopping at the chat template's end of turn;
- `web.py`: the Gradio app (needs the `chat` extra: `pip install "tinylmm[chat]"`);
- `terminal.py`: the same conversation on stdin / stdout (`/image PATH`, `/reset`);
- `command.py`: the subcommand.
"""

from .engine import ChatEngine, Conversation, GenerationSettings

__all__ = ["ChatEngine", "Conversation", "GenerationSettings"]
