"""The chat engine both front ends share: replies equal `model.generate`, turn by turn, streamed in pieces."""

import numpy as np
import pytest
import torch
from _chat_fixtures import MAX_NEW_TOKENS, QUESTIONS, generate, make_model
from PIL import Image

from trainers.chat import ChatEngine, Conversation, GenerationSettings

GREEDY = GenerationSettings(max_new_tokens=MAX_NEW_TOKENS)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.set_num_threads(1)
    folder, images = make_model(tmp_path_factory.mktemp("chat"))
    return folder, images, ChatEngine.load(folder, device="cpu")


def test_replies_equal_generate_turn_by_turn_and_depend_on_the_image(tiny):
    folder, (image, other), engine = tiny
    conversation = Conversation()
    conversation.add_user(QUESTIONS[0], [image])
    pieces = list(engine.stream(conversation, GREEDY))
    first = "".join(pieces).strip()
    conversation.add_reply(first)
    conversation.add_user(QUESTIONS[1])
    second = engine.reply(conversation, GREEDY)
    assert [first, second] == generate(folder, [(QUESTIONS[0], [image]), (QUESTIONS[1], [])])
    assert len(pieces) > 1  # streamed, not handed over whole
    assert engine.last.tokens >= 1 and engine.last.seconds > 0
    # The answer depends on what was attached: without the image, or with another, the model says otherwise.
    assert first not in generate(folder, [(QUESTIONS[0], [])]) + generate(folder, [(QUESTIONS[0], [other])])


def test_regenerating_a_greedy_reply_gives_it_again_and_two_images_go_in_one_message(tiny):
    folder, images, engine = tiny
    conversation = Conversation()
    conversation.add_user(QUESTIONS[0], images)
    reply = engine.reply(conversation, GREEDY)
    conversation.add_reply(reply)
    assert conversation.drop_reply() and not conversation.drop_reply()
    assert engine.reply(conversation, GREEDY) == reply == generate(folder, [(QUESTIONS[0], images)])[0]


def test_a_video_as_frames_reaches_the_model(tiny):
    folder, (image, other), engine = tiny
    frames = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in (image, other)])
    conversation = Conversation()
    conversation.add_user(QUESTIONS[1], videos=[frames])
    with_video = engine.reply(conversation, GREEDY)
    without = Conversation()
    without.add_user(QUESTIONS[1])
    assert with_video != engine.reply(without, GREEDY)


def test_sampling_follows_the_seed_and_settings_are_checked(tiny):
    _, (image, _), engine = tiny
    conversation = Conversation()
    conversation.add_user(QUESTIONS[0], [image])
    hot = GenerationSettings(max_new_tokens=MAX_NEW_TOKENS, temperature=1.5, top_p=0.9)
    torch.manual_seed(0)
    a = engine.reply(conversation, hot)
    torch.manual_seed(0)
    assert engine.reply(conversation, hot) == a
    for bad, message in (
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(temperature=-1.0), "temperature"),
        (dict(top_p=0.0), "top_p"),
    ):
        with pytest.raises(ValueError, match=message):
            GenerationSettings(**bad)


def test_a_reader_that_stops_early_leaves_the_engine_usable(tiny):
    folder, (image, _), engine = tiny
    conversation = Conversation()
    conversation.add_user(QUESTIONS[0], [image])
    stream = engine.stream(conversation, GenerationSettings(max_new_tokens=200))
    next(stream)
    stream.close()  # the page was closed mid-reply
    assert engine.reply(conversation, GREEDY) == generate(folder, [(QUESTIONS[0], [image])])[0]


def test_conversation_refuses_what_it_cannot_answer(tiny, tmp_path):
    _, (image, _), engine = tiny
    conversation = Conversation()
    with pytest.raises(ValueError, match="empty message"):
        conversation.add_user("  ")
    with pytest.raises(FileNotFoundError, match="nowhere.png"):
        conversation.add_user("what is it ?", [tmp_path / "nowhere.png"])
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ValueError, match="notes.png. could not be decoded"):
        conversation.add_user("what is it ?", [tmp_path / "notes.png"])
    with pytest.raises(ValueError, match="does not end with a user message"):
        engine.reply(conversation)
    conversation.add_user("what is it ?", [image])
    with pytest.raises(ValueError, match="no reply yet"):
        conversation.add_user("and now ?")


def test_missing_model_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        ChatEngine.load(tmp_path / "not-there")


def test_description_names_the_parts_and_the_template(tiny):
    _, _, engine = tiny
    text = engine.describe()
    for expected in (
        "vision encoder",
        "clip_vision_model",
        "connector",
        "mlp2x_gelu",
        "LLM",
        "llama",
        "chatml",
    ):
        assert expected in text
    total = sum(p.numel() for p in engine.model.parameters())
    assert f"{total / 1e3:.2f} K parameters" in text.split("**total**")[1]
