"""Training data: LLaVA JSON and TRL-style datasets, validation, the collator's labels and lengths."""

import os

import pytest
import torch
from _processor_fixtures import rgb
from _train_fixtures import (
    ANSWERS,
    END_OF_TURN,
    caption_rows,
    chat_rows,
    model_and_processor,
    one_thread,  # noqa: F401  (autouse fixture)
    write_images,
    write_json,
)
from datasets import Dataset, Features, Image, List, Value

from trainers.collator import DROPPED_KEY, IGNORE_INDEX, SKIPPED_KEY, TinyLMMCollator
from trainers.data import SampleError, llava_row, load_training_data
from trainers.sampler import ModalityLengthGroupedSampler, modality_lengths


@pytest.fixture(scope="module")
def chatml():
    return model_and_processor("chatml")


def _supervised(batch, row: int) -> list[int]:
    labels = batch["labels"][row]
    return labels[labels != IGNORE_INDEX].tolist()


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


# -- loading ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_llava_file_becomes_message_rows_with_image_paths(tmp_path, suffix):
    names = write_images(tmp_path / "images", 2)
    rows = chat_rows(names[:1]) + [
        {
            "images": names,
            "conversations": [
                {"from": "system", "value": "be brief ."},
                {"from": "human", "value": "<image> left <image> right : what is in this image ?"},
                {"from": "gpt", "value": "two shapes ."},
            ],
        },
        {"conversations": [{"from": "human", "value": "how many ?"}, {"from": "gpt", "value": "one"}]},
    ]
    dataset, skipped = load_training_data(
        write_json(tmp_path / f"data{suffix}", rows), image_folder=str(tmp_path / "images")
    )
    assert skipped == 0 and len(dataset) == 3
    first, multi, text = dataset[0], dataset[1], dataset[2]
    assert [m["role"] for m in first["messages"]] == ["user", "assistant", "user", "assistant"]
    folder = str(tmp_path / "images")
    assert first["messages"][0]["content"].startswith("<image>")
    assert first["images"] == [os.path.join(folder, "img0.png")]
    assert [m["role"] for m in multi["messages"]] == ["system", "user", "assistant"]
    assert multi["images"] == [os.path.join(folder, n) for n in names]  # paths, opened only by the collator
    assert text["images"] == [] and text["sample_index"] == 2
    assert first["modality_length"] > 0 > text["modality_length"]


def test_streaming_llava_gives_the_same_rows(tmp_path):
    names = write_images(tmp_path, 3)
    path = write_json(tmp_path / "data.jsonl", caption_rows(names))
    eager, _ = load_training_data(path)
    streamed, _ = load_training_data(path, streaming=True)
    assert list(streamed) == list(eager)


def test_messages_dataset_with_embedded_images(tmp_path, chatml):
    _, processor = chatml
    features = Features(
        {
            "messages": List({"role": Value("string"), "content": Value("string")}),
            "images": List(Image()),
        }
    )
    rows = {
        "messages": [
            [
                {"role": "user", "content": "what is in this image ?"},
                {"role": "assistant", "content": "a red circle ."},
            ],
            [{"role": "user", "content": "how many ?"}, {"role": "assistant", "content": "two"}],
        ],
        "images": [[rgb(40, 30)], []],
    }
    Dataset.from_dict(rows, features=features).to_parquet(tmp_path / "train.parquet")
    dataset, _ = load_training_data(str(tmp_path / "train.parquet"))
    assert dataset[1]["sample_index"] == 1
    batch = TinyLMMCollator(processor)([dataset[0], dataset[1]])
    # No <image> marker: the image goes at the start of the first user turn (TRL's convention).
    n_image_tokens = int((batch["input_ids"][0] == processor.image_token_id).sum())
    assert n_image_tokens == processor.image_processor.image_seq_length == 16
    assert batch["pixel_values"].shape[0] == 1 and batch["image_layout"].shape[0] == 1
    assert _supervised(batch, 1) == _ids(processor.tokenizer, "two <|im_end|>")


# -- bad input ----------------------------------------------------------------------------------------

BAD = {
    "empty conversation": ({"image": "a.png", "conversations": []}, "empty conversation"),
    "ends on user": (
        {
            "conversations": [
                {"from": "human", "value": "hi"},
                {"from": "gpt", "value": "yes"},
                {"from": "human", "value": "and ?"},
            ]
        },
        "ends on a user turn",
    ),
    "roles out of order": (
        {"conversations": [{"from": "gpt", "value": "yes"}, {"from": "human", "value": "hi"}]},
        "roles out of order",
    ),
    "two assistants": (
        {
            "conversations": [
                {"from": "human", "value": "hi"},
                {"from": "gpt", "value": "yes"},
                {"from": "gpt", "value": "no"},
            ]
        },
        "roles out of order",
    ),
    "more markers than images": (
        {
            "image": "a.png",
            "conversations": [
                {"from": "human", "value": "<image> <image> what ?"},
                {"from": "gpt", "value": "two"},
            ],
        },
        "2 <image> marker(s) in the conversation but 1 image(s)",
    ),
    "a marker without image": (
        {"conversations": [{"from": "human", "value": "<image> what ?"}, {"from": "gpt", "value": "two"}]},
        "1 <image> marker(s) in the conversation but 0 image(s)",
    ),
    "unknown role": (
        {"conversations": [{"from": "robot", "value": "hi"}, {"from": "gpt", "value": "yes"}]},
        "role 'robot'",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_sample_is_rejected_with_its_index(tmp_path, case):
    row, message = BAD[case]
    with pytest.raises(SampleError, match="sample 7: .*") as err:
        llava_row(row, 7)
    assert message in str(err.value)
    good = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yes"}]}
    path = write_json(tmp_path / "data.json", [good, row])
    with pytest.raises(SampleError, match=f"sample 1: .*{message[:12]}"):
        load_training_data(path)


def test_missing_image_names_sample_and_path_or_is_skipped_with_a_count(tmp_path):
    names = write_images(tmp_path, 3)
    os.remove(tmp_path / names[1])
    path = write_json(tmp_path / "data.json", caption_rows(names))
    with pytest.raises(FileNotFoundError, match=r"sample 1: .*img1\.png") as err:
        load_training_data(path, image_folder=str(tmp_path))
    assert "skip_missing_images" in str(err.value)
    dataset, skipped = load_training_data(path, image_folder=str(tmp_path), skip_missing_images=True)
    assert skipped == 1 and dataset["sample_index"] == [0, 2]


def test_collator_reports_missing_images_of_streamed_rows(tmp_path, chatml):
    _, processor = chatml
    names = write_images(tmp_path, 2)
    os.remove(tmp_path / names[0])
    rows = list(load_training_data(write_json(tmp_path / "d.jsonl", caption_rows(names)), streaming=True)[0])
    with pytest.raises(FileNotFoundError, match=r"sample 0: image file not found: .*img0\.png"):
        TinyLMMCollator(processor, image_folder=str(tmp_path))(rows)
    collator = TinyLMMCollator(processor, image_folder=str(tmp_path), skip_missing_images=True)
    batch = collator(rows)
    assert batch["input_ids"].shape[0] == 1 and batch[SKIPPED_KEY] == 1


# -- labels: exactly the assistant turns, each with its end-of-turn token ------------------------------


def _expected(tokenizer, answers, template) -> list[int]:
    return [i for a in answers for i in _ids(tokenizer, f"{a} {END_OF_TURN[template]}")]


@pytest.mark.parametrize("template", ["chatml", "llama3", "phi3", "gemma", "vicuna"])
@pytest.mark.parametrize("source", ["llava", "messages"])
def test_only_assistant_turns_are_supervised(tmp_path, template, source):
    model, processor = model_and_processor(template)
    tokenizer = processor.tokenizer
    names = write_images(tmp_path, 2)
    if source == "llava":
        rows = [llava_row(r, i) for i, r in enumerate(chat_rows(names, turns=3))]
        answers = [[ANSWERS[(i + t) % 3] for t in range(3)] for i in range(2)]
    else:
        rows = [
            {
                "messages": [
                    {"role": "system", "content": [{"type": "text", "text": "be brief ."}]},
                    {
                        "role": "user",
                        "content": [{"type": "image"}, {"type": "text", "text": "what is in this image ?"}],
                    },
                    {"role": "assistant", "content": [{"type": "text", "text": "a red circle ."}]},
                    {"role": "user", "content": [{"type": "text", "text": "how many ?"}]},
                    {"role": "assistant", "content": [{"type": "text", "text": "one"}]},
                ],
                "images": [names[0]],
            },
            {
                "messages": [
                    {"role": "user", "content": "how many ?"},
                    {"role": "assistant", "content": "two"},
                ]
            },
        ]
        answers = [["a red circle .", "one"], ["two"]]
    batch = TinyLMMCollator(processor, image_folder=str(tmp_path))(rows)
    for row, row_answers in enumerate(answers):
        assert _supervised(batch, row) == _expected(tokenizer, row_answers, template), tokenizer.decode(
            _supervised(batch, row)
        )
    assert not torch.isin(batch["labels"], torch.tensor([processor.image_token_id])).any()
    padding = batch["attention_mask"] == 0
    assert (batch["labels"][padding] == IGNORE_INDEX).all()
    with torch.no_grad():  # what the model gets is consistent: placeholders match the image features
        model(**{k: v for k, v in batch.items() if k not in (DROPPED_KEY, SKIPPED_KEY)})


def test_alignment_supervises_the_caption_only(tmp_path):
    _, processor = model_and_processor("plain")
    names = write_images(tmp_path, 2)
    rows = [llava_row(r, i) for i, r in enumerate(caption_rows(names))]
    batch = TinyLMMCollator(processor, chat_template="plain", image_folder=str(tmp_path))(rows)
    for row in range(2):
        caption = rows[row]["messages"][1]["content"]
        assert _supervised(batch, row) == _ids(processor.tokenizer, caption + " </s>")
        ids = batch["input_ids"][row][batch["attention_mask"][row] == 1]
        # Image placeholders, then the caption: the prompt text is not rendered in `plain`.
        assert ids[:16].eq(processor.image_token_id).all() and len(ids) == 16 + len(_supervised(batch, row))


# -- lengths: never cut through image tokens -----------------------------------------------------------


def test_too_long_sample_is_shortened_at_a_turn_boundary(tmp_path, chatml):
    _, processor = chatml
    names = write_images(tmp_path, 2)
    row = {
        "conversations": [
            {"from": "human", "value": "<image>\nwhat is in this image ?"},
            {"from": "gpt", "value": "a red circle ."},
            {"from": "human", "value": "and in this image ? <image>"},
            {"from": "gpt", "value": "a blue square ."},
        ],
        "images": names,
    }
    full = TinyLMMCollator(processor, image_folder=str(tmp_path))([llava_row(row, 0)])
    first_exchange = llava_row({"conversations": row["conversations"][:2], "image": names[0]}, 0)
    expected = TinyLMMCollator(processor, image_folder=str(tmp_path))([first_exchange])
    length = full["input_ids"].shape[1] - 1
    batch = TinyLMMCollator(processor, max_length=length, image_folder=str(tmp_path))([llava_row(row, 0)])
    assert batch[DROPPED_KEY] == 0
    assert torch.equal(batch["input_ids"], expected["input_ids"])
    assert torch.equal(batch["labels"], expected["labels"])
    # The second image went with its turn: one image's crops and placeholders are left, all of them.
    assert batch["image_layout"].shape[0] == 1 and full["image_layout"].shape[0] == 2
    assert int((batch["input_ids"] == processor.image_token_id).sum()) == int(batch["image_layout"][0, -1])


def test_sample_that_cannot_fit_is_dropped_and_counted(tmp_path, chatml):
    _, processor = chatml
    names = write_images(tmp_path, 2)
    rows = [llava_row(r, i) for i, r in enumerate(caption_rows(names))]
    rows.append(
        llava_row({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "one"}]}, 2)
    )
    collator = TinyLMMCollator(processor, max_length=12, image_folder=str(tmp_path))  # 16 image tokens
    batch = collator(rows)
    assert batch[DROPPED_KEY] == 2 and collator.stats[DROPPED_KEY] == 2
    assert batch["input_ids"].shape[0] == 1 and "pixel_values" not in batch
    everything = collator(rows[:2])  # a batch left empty still gives a valid step that supervises nothing
    assert everything[DROPPED_KEY] == 2 and (everything["labels"] == IGNORE_INDEX).all()


def test_per_sample_processing_matches_one_batched_processor_call(tmp_path, chatml):
    _, processor = chatml
    names = write_images(tmp_path, 3)
    rows = [llava_row(r, i) for i, r in enumerate(chat_rows(names))]
    batch = TinyLMMCollator(processor, image_folder=str(tmp_path))(rows)
    from trainers.data import to_chat

    chats = [to_chat(r["messages"], 1, 0) for r in rows]
    images = [[rgb(40, 30, seed=i)] for i in range(3)]
    reference = processor.apply_chat_template(
        chats, tokenize=True, return_dict=True, images=images, padding=True, return_tensors="pt"
    )
    assert torch.equal(batch["input_ids"], reference["input_ids"])
    assert torch.equal(batch["attention_mask"], reference["attention_mask"])
    assert torch.equal(batch["pixel_values"], reference["pixel_values"])
    assert torch.equal(batch["image_layout"], reference["image_layout"])


# -- modality-length grouping -------------------------------------------------------------------------


def test_modality_length_batches_hold_one_modality_and_replay_per_epoch():
    lengths = [5, -3, 9, -7, 2, -1, 8, -4, 6, -2, 3, -9]  # positive: with images
    sampler = ModalityLengthGroupedSampler(lengths, megabatch=2, seed=3)
    order = list(sampler)
    assert sorted(order) == list(range(len(lengths)))
    batches = [order[i : i + 2] for i in range(0, len(order), 2)]
    assert all(len({lengths[i] > 0 for i in batch}) == 1 for batch in batches)
    assert all(abs(lengths[b[0]]) >= abs(lengths[b[1]]) for b in batches)
    assert list(sampler) == order  # same (seed, epoch), same order: resuming replays it
    sampler.set_epoch(1)
    assert list(sampler) != order


def test_modality_lengths_of_a_messages_dataset_do_not_decode_images():
    features = Features(
        {"messages": List({"role": Value("string"), "content": Value("string")}), "images": List(Image())}
    )
    dataset = Dataset.from_dict(
        {
            "messages": [
                [{"role": "user", "content": "a b c"}, {"role": "assistant", "content": "d"}],
                [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
            ],
            "images": [[rgb(8, 8)], []],
        },
        features=features,
    )
    assert modality_lengths(dataset) == [5, -3]


def test_video_frames_and_embedded_images_reach_the_model(tmp_path, chatml):
    model, processor = chatml
    frames = tmp_path / "clip0"
    write_images(frames, 3)
    # LLaVA-OneVision marks a video with <image>; the frames are a folder.
    video_row = {
        "video": "clip0",
        "conversations": [
            {"from": "human", "value": "<image>\nwhat is in this video ?"},
            {"from": "gpt", "value": "a red circle ."},
        ],
    }
    dataset, _ = load_training_data(write_json(tmp_path / "v.json", [video_row]))
    embedded = {
        "messages": [
            {
                "role": "user",
                "content": [{"type": "image", "image": rgb(40, 30)}, {"type": "text", "text": "what ?"}],
            },
            {"role": "assistant", "content": [{"type": "text", "text": "two"}]},
        ]
    }
    batch = TinyLMMCollator(processor)([dataset[0], embedded])
    video, image = batch["image_layout"].tolist()
    assert video[0] == 2 and video[1] == 3  # kind VIDEO, three frames
    assert int((batch["input_ids"][0] == processor.image_token_id).sum()) == video[-1]
    assert int((batch["input_ids"][1] == processor.image_token_id).sum()) == image[-1] == 16
    with torch.no_grad():
        model(**{k: v for k, v in batch.items() if k not in (DROPPED_KEY, SKIPPED_KEY)})
