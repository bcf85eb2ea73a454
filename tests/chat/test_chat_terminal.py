"""`tinylmm chat --cli`: the conversation on stdin / stdout, and what the command says without Gradio."""

import os
import subprocess
import sys

import pytest
from _chat_fixtures import MAX_NEW_TOKENS, QUESTIONS, generate, make_model

from trainers.chat.terminal import MODEL


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("chat"))


def _tinylmm(*args, stdin: str = "", code: str = "") -> subprocess.CompletedProcess:
    """The `tinylmm` command in a new process (after `code`, run first)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    main = f"{code}\nimport sys\nfrom trainers.cli import main\nsys.exit(main({list(args)!r}))"
    return subprocess.run(
        [sys.executable, "-c", main], input=stdin, capture_output=True, text=True, env=env, timeout=300
    )


def test_terminal_chat_attaches_images_keeps_history_and_resets(tiny):
    folder, (image, _) = tiny
    lines = [
        f"/image {image}",
        QUESTIONS[0],
        QUESTIONS[1],
        "/image nowhere.png",
        "/reset",
        QUESTIONS[0],
        "/quit",
        "never read",
    ]
    proc = _tinylmm(
        "chat",
        "--model",
        str(folder),
        "--cli",
        "--max_new_tokens",
        str(MAX_NEW_TOKENS),
        stdin="\n".join(lines),
    )
    assert proc.returncode == 0, proc.stderr
    replies = [line.split(MODEL, 1)[1].strip() for line in proc.stdout.splitlines() if MODEL in line]
    expected = generate(folder, [(QUESTIONS[0], [image]), (QUESTIONS[1], [])])
    assert replies == [*expected, *generate(folder, [(QUESTIONS[0], [])])]
    assert "image file 'nowhere.png' does not exist" in proc.stdout  # reported, and the chat went on
    assert "(conversation cleared)" in proc.stdout
    assert "vision encoder" in proc.stdout and "chatml" in proc.stdout  # the model's parts, first


def test_web_chat_without_gradio_says_how_to_install_it(tiny):
    folder, _ = tiny
    proc = _tinylmm("chat", "--model", str(folder), code="import sys\nsys.modules['gradio'] = None")
    assert proc.returncode == 1
    assert 'pip install "tinylmm[chat]"' in proc.stderr and "--cli" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr  # one line, before any model loading


def test_chat_help_shows_examples(capsys):
    from trainers.cli import main

    with pytest.raises(SystemExit):
        main(["chat", "--help"])
    out = capsys.readouterr().out
    assert "tinylmm chat --model tinylmm-demo/sft --cli" in out and "--share" in out and "--port" in out
