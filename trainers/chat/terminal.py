"""The terminal side of `tinylmm chat --cli`: the conversation on stdin / stdout, around a `ChatEngine`.

A line is a message; `/image PATH` (and `/video PATH`) attaches a file to the next message, `/reset` starts
over, `/help` lists the commands, `/quit` or end of input ends the chat.
"""

from __future__ import annotations

import shlex
import sys
from typing import TextIO

from processors.image_processing_tinylmm import load_image

from .engine import ChatEngine, Conversation, GenerationSettings

HELP = """commands:
  /image PATH   attach an image to your next message (several: one /image each)
  /video PATH   attach a video to your next message
  /reset        forget the conversation and the attachments
  /help         this list
  /quit         leave (so does end of input, Ctrl-D)"""
USER, MODEL = "you> ", "model> "


def _path(argument: str) -> str:
    parts = shlex.split(argument)
    if len(parts) != 1:
        raise ValueError("give one path (quote it if it holds spaces).")
    return parts[0]


def chat(
    engine: ChatEngine,
    settings: GenerationSettings | None = None,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
) -> int:
    """Run the conversation until /quit or end of input; returns the exit status."""
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    settings = settings or GenerationSettings()
    conversation = Conversation()
    images: list[str] = []
    videos: list[str] = []

    def say(text: str = "", end: str = "\n") -> None:
        stdout.write(text + end)
        stdout.flush()

    say(f"tinylmm chat: {engine.name}\n{engine.describe()}\n\n{HELP}\n")
    while True:
        say(USER, end="")
        line = stdin.readline()
        if not line:  # end of input
            say()
            return 0
        line = line.strip()
        if not line:
            continue
        command, _, argument = line.partition(" ")
        try:
            if command in ("/quit", "/exit"):
                return 0
            if command == "/help":
                say(HELP)
                continue
            if command == "/reset":
                conversation.reset()
                images.clear()
                videos.clear()
                say("(conversation cleared)")
                continue
            if command in ("/image", "/video"):
                path = _path(argument)
                if command == "/image":
                    load_image(path)  # a bad file is reported now, not with the next message
                    images.append(path)
                else:
                    if not engine.takes_video:
                        raise ValueError(
                            "this model or setup takes no video (video files need: pip install av)."
                        )
                    videos.append(path)
                say(f"(attached {path}; it goes with your next message)")
                continue
            if command.startswith("/"):
                raise ValueError(f"unknown command {command}; /help lists them.")
            conversation.add_user(line, images, videos)
        except (ValueError, FileNotFoundError) as err:
            say(f"(error: {err})")
            continue
        images, videos = [], []
        say(MODEL, end="")
        text = ""
        try:
            for piece in engine.stream(conversation, settings):
                text += piece
                say(piece, end="")
        except Exception as err:  # the message is taken back: the chat goes on
            conversation.messages.pop()
            say(f"\n(error while generating: {err})")
            continue
        conversation.add_reply(text.strip())
        say()
