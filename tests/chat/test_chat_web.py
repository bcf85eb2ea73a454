"""`tinylmm chat` in a real browser: the app started as a user starts it, driven by headless Chromium.

Needs Gradio (`pip install "tinylmm[chat]"`), Playwright's Python package and Debian's `chromium`
(`apt-get install chromium chromium-driver`); Playwright drives the system browser, it downloads none.
`TINYLMM_CHAT_MODEL=DIR` runs the test on another model (a `tinylmm demo` output's `sft` folder answers the
questions for real), and `TINYLMM_CHAT_SCREENSHOT=PATH` saves a screenshot of the page after two turns. The
README's docs/chat.png is made so:

    tinylmm demo --out tinylmm-demo
    TINYLMM_CHAT_MODEL=tinylmm-demo/sft TINYLMM_CHAT_SCREENSHOT=docs/chat.png \\
        python -m pytest tests/chat/test_chat_web.py
"""

import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from _chat_fixtures import MAX_NEW_TOKENS, QUESTIONS, generate, make_model, scene_images

pytest.importorskip("gradio", reason='the web app needs Gradio: pip install "tinylmm[chat]"')
sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs: pip install playwright")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("the browser test needs Chromium: apt-get install chromium", allow_module_level=True)

# Flags for a root, headless, offline Chromium with a fresh profile (Playwright gives each launch a new one).
BROWSER_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
BOT = "#tinylmm-chatbot [data-testid='bot']"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(model, port: int, *options: str) -> subprocess.Popen:
    """`tinylmm chat --model MODEL --port PORT` in its own process; returns once the page is served."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "trainers.cli",
        "chat",
        "--model",
        str(model),
        "--port",
        str(port),
        *options,
    ]
    app = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if app.poll() is not None:
            raise RuntimeError(f"the app exited: {app.stdout.read()}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
            return app
        except OSError:
            time.sleep(0.5)
    app.kill()
    raise RuntimeError("the app did not answer within 180 s")


def ask(page, text: str, images=(), turns: int = 1, number: int = 1) -> str:
    """Attach `images`, send `text`, wait for the reply (the `turns`-th of the conversation, the `number`-th
    of the app) to finish; returns the reply shown."""
    box = page.locator("#tinylmm-input")
    if images:
        box.locator("input[type=file]").set_input_files([str(p) for p in images])
        page.wait_for_function(  # the upload is shown in the box before the message is sent
            "n => document.querySelectorAll('#tinylmm-input img, #tinylmm-input .thumbnail-item').length >= n",
            arg=len(images),
        )
    box.locator("textarea").fill(text)
    box.locator("textarea").press("Enter")
    done(page, turns, number)
    return page.locator(BOT).nth(turns - 1).inner_text().strip()


def done(page, turns: int, number: int) -> None:
    """Wait until the app's `number`-th reply is finished, the conversation holding `turns` replies."""
    page.wait_for_function(
        '([n, k]) => document.querySelectorAll("' + BOT + '").length == n && '
        "document.querySelector('#tinylmm-status').innerText.startsWith(`Reply ${k} done`)",
        arg=[turns, number],
        timeout=120_000,
    )


def save_screenshot(page, path: str) -> None:
    """The page as a small PNG (256 colours: the page is flat colours and text)."""
    from PIL import Image

    Image.open(io.BytesIO(page.screenshot())).convert("RGB").quantize(256).save(path, optimize=True)


def words(text: str) -> list[str]:
    return text.split()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    if os.environ.get("TINYLMM_CHAT_MODEL"):
        folder = Path(os.environ["TINYLMM_CHAT_MODEL"])
        images = scene_images(tmp_path_factory.mktemp("chat"))
    else:
        folder, images = make_model(tmp_path_factory.mktemp("chat"))
    port = free_port()
    app = start_app(folder, port, "--max_new_tokens", str(MAX_NEW_TOKENS))
    yield folder, images, f"http://127.0.0.1:{port}/"
    app.terminate()
    app.wait(timeout=30)


@pytest.fixture(scope="module")
def page(served):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=BROWSER_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 720})
        page.goto(served[2])
        page.wait_for_selector("#tinylmm-input textarea")
        yield page
        browser.close()


def test_browser_chat_answers_as_generate_does_and_keeps_the_conversation(served, page):
    folder, (image, other), _ = served
    expected = generate(folder, [(QUESTIONS[0], [image]), (QUESTIONS[1], [])])
    # What the image changes: without it, or with another, the model answers otherwise.
    otherwise = generate(folder, [(QUESTIONS[0], [])]) + generate(folder, [(QUESTIONS[0], [other])])
    assert any(answer != expected[0] for answer in otherwise)

    first = ask(page, QUESTIONS[0], [image], turns=1, number=1)
    assert words(first) == words(expected[0])
    assert page.locator("#tinylmm-chatbot [data-testid='user'] img").count() == 1  # the upload is shown
    second = ask(page, QUESTIONS[1], turns=2, number=2)
    assert words(second) == words(expected[1])
    if os.environ.get("TINYLMM_CHAT_SCREENSHOT"):
        save_screenshot(page, os.environ["TINYLMM_CHAT_SCREENSHOT"])

    page.click("#tinylmm-regenerate")  # greedy: the same reply again, the first turn kept
    done(page, 2, 3)
    assert words(page.locator(BOT).nth(1).inner_text()) == words(expected[1])
    assert words(page.locator(BOT).nth(0).inner_text()) == words(expected[0])

    page.click("#tinylmm-clear")
    page.wait_for_function('document.querySelectorAll("' + BOT + '").length == 0')
    # A new conversation: the image and the turns before are gone.
    assert words(ask(page, QUESTIONS[0], turns=1, number=4)) == words(
        generate(folder, [(QUESTIONS[0], [])])[0]
    )


def test_page_names_the_model_parts_and_generation_settings(served, page):
    panel = page.locator("#tinylmm-model").inner_text()
    for expected in (
        "vision encoder",
        "clip_vision_model",
        "connector",
        "mlp2x_gelu",
        "LLM",
        "llama",
        "chatml",
    ):
        assert expected in panel
    body = page.locator("body").inner_text()
    for label in ("max new tokens", "temperature", "top-p", "Regenerate", "Clear"):
        assert label in body
