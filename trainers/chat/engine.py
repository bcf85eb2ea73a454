"""The chat engine: one loaded model, a conversation with its images and videos, and replies streamed token
by token. The web app and the terminal both talk through it; neither has generation code of its own."""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from processors.chat_templates import end_of_turn_ids
from processors.image_processing_tinylmm import load_image

from ..model_card import chat_template_name, human_count, model_parts

# A Hub model id ("org/name"); a name that is neither this nor a folder is a folder that does not exist.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv", ".avi")


@dataclass
class GenerationSettings:
    """How a reply is generated: at most `max_new_tokens`; greedy at temperature 0, else sampled with
    `temperature` and nucleus `top_p`."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0

    def __post_init__(self):
        if isinstance(self.max_new_tokens, bool) or int(self.max_new_tokens) < 1:
            raise ValueError(f"max_new_tokens must be 1 or more, got {self.max_new_tokens!r}.")
        self.max_new_tokens = int(self.max_new_tokens)
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be 0 (greedy) or more, got {self.temperature!r}.")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}.")

    def generate_kwargs(self) -> dict:
        if self.temperature == 0:
            return {"max_new_tokens": self.max_new_tokens, "do_sample": False}
        return {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": True,
            "temperature": float(self.temperature),
            "top_p": float(self.top_p),
        }


@dataclass
class Conversation:
    """The messages so far, in the chat-template format: a user turn holds its images / videos as parts
    before its text."""

    messages: list[dict] = field(default_factory=list)

    def add_user(self, text: str, images: Sequence = (), videos: Sequence = ()) -> None:
        if self.messages and self.messages[-1]["role"] == "user":
            raise ValueError("the last user message has no reply yet.")
        if not text.strip() and not images and not videos:
            raise ValueError("an empty message: type a question, or attach an image.")
        # The processor's loader: upright, 8-bit RGB; a missing or unreadable file is named in the error.
        content = [{"type": "image", "image": load_image(i)} for i in images]
        content += [
            {"type": "video", "video": os.fspath(v) if isinstance(v, os.PathLike) else v} for v in videos
        ]
        content.append({"type": "text", "text": text})
        self.messages.append({"role": "user", "content": content})

    def add_reply(self, text: str) -> None:
        if not self.messages or self.messages[-1]["role"] != "user":
            raise ValueError("a reply follows a user message.")
        self.messages.append({"role": "assistant", "content": [{"type": "text", "text": text}]})

    def drop_reply(self) -> bool:
        """Remove the last reply (to generate it again); False when the conversation does not end with one."""
        if self.messages and self.messages[-1]["role"] == "assistant":
            self.messages.pop()
            return True
        return False

    def reset(self) -> None:
        self.messages.clear()

    @property
    def awaiting_reply(self) -> bool:
        return bool(self.messages) and self.messages[-1]["role"] == "user"


def _counting_streamer(tokenizer):
    from transformers import TextIteratorStreamer

    class CountingStreamer(TextIteratorStreamer):
        """TextIteratorStreamer that also counts the new tokens."""

        tokens = 0

        def put(self, value):
            if not (self.skip_prompt and self.next_tokens_are_prompt):
                self.tokens += value.numel()
            super().put(value)

    return CountingStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


@dataclass
class ReplyStats:
    """The last reply: its number since the engine started, its length in tokens, how long it took."""

    number: int = 0
    tokens: int = 0
    seconds: float = 0.0


class ChatEngine:
    """A model and its processor, ready to answer a `Conversation`. Generation stops at the chat template's
    end of turn; one reply is generated at a time (callers from several threads wait their turn)."""

    def __init__(self, model, processor, name: str | None = None):
        self.model = model.eval()
        self.processor = processor
        self.name = name or getattr(model, "name_or_path", None) or "model"
        tokenizer = processor.tokenizer
        self.stop_ids = end_of_turn_ids(processor.chat_template, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_ids[0]
        self.last = ReplyStats()
        self._lock = threading.Lock()

    @classmethod
    def load(
        cls, name: str | os.PathLike, device: str | None = None, trust_remote_code: bool = False
    ) -> ChatEngine:
        """From a saved folder (a LoRA checkpoint too: its base model is loaded under it) or a Hub id."""
        from transformers import AutoModelForImageTextToText, AutoProcessor

        import modeling_tinylmm  # noqa: F401  (registers the Auto classes)
        import processors  # noqa: F401

        name = os.fspath(name)
        if os.path.isfile(name):
            raise ValueError(f"--model {name} is a file; give the model's folder.")
        if not os.path.isdir(name) and not _HUB_ID.fullmatch(name):
            raise FileNotFoundError(f"--model {name}: no such folder (nor a Hub id of the form org/name).")
        model = AutoModelForImageTextToText.from_pretrained(
            name, dtype="auto", trust_remote_code=trust_remote_code
        )
        processor = AutoProcessor.from_pretrained(name, trust_remote_code=trust_remote_code)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        return cls(model.to(device), processor, name=name)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def takes_video(self) -> bool:
        """Whether a video file can be attached: the model reads video frames, and PyAV decodes files."""
        if "video" not in getattr(self.model, "input_modalities", ()):
            return False
        try:
            import av  # noqa: F401
        except ImportError:
            return False
        return True

    def inputs(self, conversation: Conversation):
        """The model's inputs for the conversation so far, with the prompt that starts the reply."""
        return self.processor.apply_chat_template(
            conversation.messages,
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
        ).to(self.device)

    def stream(self, conversation: Conversation, settings: GenerationSettings | None = None) -> Iterator[str]:
        """The reply to the conversation's last user message, as pieces of text while they are generated.
        The conversation is not changed: add the reply with `conversation.add_reply`."""
        from transformers import StoppingCriteria, StoppingCriteriaList

        if not conversation.awaiting_reply:
            raise ValueError("the conversation does not end with a user message to reply to.")
        settings = settings or GenerationSettings()
        inputs = self.inputs(conversation)
        streamer = _counting_streamer(self.processor.tokenizer)
        cancelled = threading.Event()
        failure: list[BaseException] = []

        class Cancelled(StoppingCriteria):  # the reader went away: stop generating
            def __call__(self, input_ids, scores, **kwargs):
                return torch.full((input_ids.shape[0],), cancelled.is_set(), dtype=torch.bool)

        def generate():
            try:
                with torch.no_grad():
                    self.model.generate(
                        **inputs,
                        streamer=streamer,
                        eos_token_id=self.stop_ids,
                        pad_token_id=self.pad_id,
                        stopping_criteria=StoppingCriteriaList([Cancelled()]),
                        **settings.generate_kwargs(),
                    )
            except BaseException as err:  # handed to the reader, which raises it
                failure.append(err)
                streamer.end()

        with self._lock:
            start = time.perf_counter()
            worker = threading.Thread(target=generate, name="tinylmm-chat-generate", daemon=True)
            worker.start()
            try:
                yield from streamer
            finally:
                cancelled.set()
                worker.join()
                self.last = ReplyStats(self.last.number + 1, streamer.tokens, time.perf_counter() - start)
        if failure:
            raise failure[0]

    def reply(self, conversation: Conversation, settings: GenerationSettings | None = None) -> str:
        """The whole reply (what `stream` yields, joined), without surrounding whitespace."""
        return "".join(self.stream(conversation, settings)).strip()

    # -- what the model is ---------------------------------------------------------------------------

    def describe(self) -> str:
        """The model's parts (encoder, connector, LLM) with their parameter counts, and its chat template, as
        a Markdown list (it reads as plain text in a terminal too)."""
        lines = []
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        if hasattr(type(base), "parts"):
            for p in model_parts(self.model):
                detail = f" ({p.detail})" if p.detail else ""
                lines.append(f"- **{p.label}**: `{p.kind}`, {human_count(p.parameters)} parameters{detail}")
        else:  # another architecture (a LLaVA checkpoint): its type only
            lines.append(f"- **model**: `{self.model.config.model_type}`")
        total = sum(p.numel() for p in self.model.parameters())
        lines.append(f"- **total**: {human_count(total)} parameters")
        template = chat_template_name(self.processor.chat_template)
        stops = ", ".join(repr(t) for t in self.processor.tokenizer.convert_ids_to_tokens(self.stop_ids))
        dtype = next(self.model.parameters()).dtype
        lines += [
            "",
            f"Chat template: `{template}`; a reply ends at {stops}.",
            f"Running on {self.device.type}, {str(dtype).removeprefix('torch.')}.",
        ]
        return "\n".join(lines)
