"""The browser app of `tinylmm chat`: a Gradio page on 127.0.0.1 around a `ChatEngine`.

Images (and videos, for a model that reads them and with PyAV installed) are attached to a message; the
reply streams in as it is generated; max new tokens, temperature and top-p are set beside the chat; Regenerate
asks again for the last reply, Clear starts over; a panel names the model's parts.
"""

from __future__ import annotations

import os
from pathlib import Path

from .engine import VIDEO_SUFFIXES, ChatEngine, Conversation, GenerationSettings

INSTALL_HINT = 'the web app needs Gradio: pip install "tinylmm[chat]" (or use --cli for the terminal)'
# Element ids the page's parts carry (the browser test and any user CSS find them by these).
STATUS_ID, CHATBOT_ID, INPUT_ID = "tinylmm-status", "tinylmm-chatbot", "tinylmm-input"


def import_gradio():
    """Gradio, or an error saying how to install it. Its usage statistics stay off (no network calls)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio
    except ImportError as err:
        raise ImportError(INSTALL_HINT) from err
    return gradio


def _split_files(files: list) -> tuple[list[str], list[str]]:
    images, videos = [], []
    for f in files or []:
        path = f if isinstance(f, str) else (f.get("path") if isinstance(f, dict) else getattr(f, "path", f))
        (videos if Path(path).suffix.lower() in VIDEO_SUFFIXES else images).append(path)
    return images, videos


def _status(engine: ChatEngine) -> str:
    stats = engine.last
    rate = f", {stats.tokens / stats.seconds:.1f} tokens/s" if stats.seconds > 0 else ""
    return f"Reply {stats.number} done: {stats.tokens} tokens in {stats.seconds:.2f} s{rate}."


def build_app(engine: ChatEngine, settings: GenerationSettings | None = None):
    """The Gradio Blocks app (not launched); `settings` are the sliders' starting values."""
    gr = import_gradio()
    start = settings or GenerationSettings()

    file_types = ["image", *VIDEO_SUFFIXES] if engine.takes_video else ["image"]
    with gr.Blocks(title=f"tinylmm chat: {Path(engine.name).name}") as app:
        conversation = gr.State(None)  # a Conversation per browser session, made at its first message
        gr.Markdown(f"### tinylmm chat: `{engine.name}`")
        with gr.Row():
            with gr.Column(scale=3):
                chatbot = gr.Chatbot(
                    label="conversation", elem_id=CHATBOT_ID, height=460, buttons=["copy", "copy_all"]
                )
                box = gr.MultimodalTextbox(
                    placeholder="Attach one or more images"
                    + (" or a video" if engine.takes_video else "")
                    + ", type a question, press Enter",
                    file_types=file_types,
                    file_count="multiple",
                    show_label=False,
                    elem_id=INPUT_ID,
                )
                with gr.Row():
                    regenerate = gr.Button("Regenerate", elem_id="tinylmm-regenerate")
                    clear = gr.Button("Clear", elem_id="tinylmm-clear")
                status = gr.Markdown("Ready.", elem_id=STATUS_ID)
            with gr.Column(scale=2):
                with gr.Accordion("Generation", open=True):
                    max_new_tokens = gr.Slider(
                        1,
                        max(2048, start.max_new_tokens),
                        value=start.max_new_tokens,
                        step=1,
                        label="max new tokens",
                    )
                    temperature = gr.Slider(
                        0.0, 2.0, value=start.temperature, step=0.05, label="temperature (0: greedy)"
                    )
                    top_p = gr.Slider(0.05, 1.0, value=start.top_p, step=0.05, label="top-p")
                with gr.Accordion("Model", open=True):
                    gr.Markdown(engine.describe(), elem_id="tinylmm-model")

        def respond(history, convo, tokens, temp, p):
            """Stream the reply to the conversation's last user message into the chat."""
            try:
                settings = GenerationSettings(int(tokens), float(temp), float(p))
                history = [*history, {"role": "assistant", "content": ""}]
                text = ""
                for piece in engine.stream(convo, settings):
                    text += piece
                    history[-1] = {"role": "assistant", "content": text}
                    yield history, convo, "Generating…"
            except Exception as err:  # shown on the page, the conversation left as it was
                raise gr.Error(str(err)) from err
            convo.add_reply(text.strip())
            history[-1] = {"role": "assistant", "content": text.strip()}
            yield history, convo, _status(engine)

        def submit(message, history, convo, tokens, temp, p):
            text = (message or {}).get("text", "")
            images, videos = _split_files((message or {}).get("files", []))
            convo = convo or Conversation()
            try:
                convo.add_user(text, images, videos)
            except (ValueError, FileNotFoundError) as err:
                raise gr.Error(str(err)) from err
            before = list(history or [])
            history = before + [{"role": "user", "content": {"path": path}} for path in [*images, *videos]]
            if text.strip():
                history.append({"role": "user", "content": text})
            yield gr.MultimodalTextbox(value=None, interactive=False), history, convo, "Generating…"
            shown, note = history, "Generating…"
            try:
                for shown, _, note in respond(history, convo, tokens, temp, p):
                    yield gr.MultimodalTextbox(interactive=False), shown, convo, note
            except gr.Error:
                convo.messages.pop()  # the message is taken back; the chat goes on
                yield gr.MultimodalTextbox(interactive=True), before, convo, "Failed."
                raise
            yield gr.MultimodalTextbox(interactive=True), shown, convo, note

        def again(history, convo, tokens, temp, p):
            if convo is None or not convo.drop_reply():
                raise gr.Error("nothing to regenerate yet.")
            if history and history[-1]["role"] == "assistant":
                history = history[:-1]
            yield from respond(history, convo, tokens, temp, p)

        def reset():
            return [], Conversation(), "Cleared.", gr.MultimodalTextbox(value=None, interactive=True)

        settings = [max_new_tokens, temperature, top_p]
        box.submit(submit, [box, chatbot, conversation, *settings], [box, chatbot, conversation, status])
        regenerate.click(again, [chatbot, conversation, *settings], [chatbot, conversation, status])
        clear.click(reset, None, [chatbot, conversation, status, box])
    return app


def launch(
    engine: ChatEngine,
    port: int | None = None,
    share: bool = False,
    block: bool = True,
    settings: GenerationSettings | None = None,
):
    """Serve the app on 127.0.0.1 (`port`: None picks a free one from 7860 on); `share` makes a public
    Gradio link. With `block=False`, returns the running app (close it with `app.close()`)."""
    gr = import_gradio()
    app = build_app(engine, settings)
    # System fonts: the page loads nothing from outside (it also works offline).
    theme = gr.themes.Default(
        font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
    )
    app.queue(default_concurrency_limit=1).launch(
        server_name="127.0.0.1",
        server_port=port,
        share=share,
        inbrowser=False,
        prevent_thread_lock=True,
        theme=theme,
        footer_links=[],
        quiet=True,
    )
    print(
        f"tinylmm chat: {app.local_url} serves {engine.name}"
        + (f"; public link {app.share_url}" if app.share_url else "")
    )
    if block:
        print("(Ctrl-C stops it)")
        app.block_thread()
    return app
