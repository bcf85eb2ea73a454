"""The evaluation harness: benchmark files in public formats, batched greedy decoding, clear errors."""

import json

import pytest
import torch
from PIL import Image

from trainers import evaluation as E
from trainers.cli import main as cli
from trainers.demo import QUICK
from trainers.demo.pipeline import build_start
from trainers.evaluation import generation as G


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny random-weight tinylmm checkpoint with its processor (the demo's starting point)."""
    folder = tmp_path_factory.mktemp("ckpt")
    build_start(folder, QUICK)
    return folder


@pytest.fixture(scope="module")
def model(checkpoint):
    return E.load_model(checkpoint, device="cpu")


@pytest.fixture
def images(tmp_path):
    for i, colour in enumerate(("red", "blue", "green")):
        Image.new("RGB", (48, 48), colour).save(tmp_path / f"img{i}.png")
    return tmp_path


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# -- reading files ---------------------------------------------------------------------------------------


def test_pope_file_missing_field_names_the_line(images):
    data = _jsonl(
        images / "pope.jsonl",
        [
            {"image": "img0.png", "text": "Is there a circle in the image?", "label": "yes"},
            {"image": "img1.png", "text": "Is there a ring in the image?"},
        ],
    )
    with pytest.raises(E.BenchmarkError, match=r"pope\.jsonl, line 2: missing field 'label'"):
        E.load_benchmark("pope", str(data))


def test_pope_label_must_be_yes_or_no(images):
    data = _jsonl(images / "pope.jsonl", [{"image": "img0.png", "question": "Is there?", "label": "maybe"}])
    with pytest.raises(E.BenchmarkError, match='line 1: label must be "yes" or "no"'):
        E.load_benchmark("pope", str(data))


def test_missing_image_names_the_path(images, tmp_path):
    data = _jsonl(images / "pope.jsonl", [{"image": "nowhere.png", "text": "Is there?", "label": "no"}])
    with pytest.raises(FileNotFoundError, match=r"line 1: image not found: .*nowhere\.png"):
        E.load_benchmark("pope", str(data))
    # --images redirects relative paths.
    other = tmp_path / "other"
    other.mkdir()
    Image.new("RGB", (8, 8)).save(other / "nowhere.png")
    assert E.load_benchmark("pope", str(data), images=str(other))[0].image == str(other / "nowhere.png")


def test_invalid_json_names_the_line(images):
    (images / "bad.jsonl").write_text('{"image": "img0.png"}\n{not json}\n')
    with pytest.raises(E.BenchmarkError, match="line 2: not valid JSON"):
        E.load_benchmark("pope", str(images / "bad.jsonl"))


def test_vqav2_files(images):
    questions = {
        "questions": [
            {"question_id": 7, "image_id": 0, "question": "What colour?"},
            {"question_id": 8, "image_id": 1, "question": "How many?"},
        ]
    }
    annotations = {
        "annotations": [
            {"question_id": 8, "image_id": 1, "answer_type": "number", "answers": [{"answer": "2"}] * 10},
            {
                "question_id": 7,
                "image_id": 0,
                "answer_type": "other",
                "multiple_choice_answer": "red",
                "answers": [{"answer": "red"}] * 6 + [{"answer": "pink"}] * 4,
            },
        ]
    }
    (images / "q.json").write_text(json.dumps(questions))
    (images / "a.json").write_text(json.dumps(annotations))
    samples = E.load_benchmark(
        "vqa", str(images / "q.json"), annotations=str(images / "a.json"), image_pattern="img{image_id}.png"
    )
    assert [s.id for s in samples] == [7, 8]
    assert samples[0].category == "other" and samples[0].extra["majority"] == "red"
    assert samples[1].references == ["2"] * 10 and samples[1].image.endswith("img1.png")
    # One annotation missing its answers: the error names it.
    del annotations["annotations"][0]["answers"]
    (images / "a.json").write_text(json.dumps(annotations))
    with pytest.raises(E.BenchmarkError, match="question 1: missing field 'answers'"):
        E.load_benchmark(
            "vqa",
            str(images / "q.json"),
            annotations=str(images / "a.json"),
            image_pattern="img{image_id}.png",
        )


def test_vqa_questions_without_annotations_is_an_error(images):
    (images / "q.json").write_text(
        json.dumps({"questions": [{"question_id": 1, "image_id": 0, "question": "?"}]})
    )
    with pytest.raises(E.BenchmarkError, match="missing field 'annotations'.*--annotations"):
        E.load_benchmark("vqa", str(images / "q.json"))


def test_multiple_choice_formats(images):
    data = _jsonl(
        images / "mc.jsonl",
        [
            {
                "question": "Which colour?",
                "options": ["red", "blue"],
                "answer": 1,
                "image": "img0.png",
                "hint": "Look.",
            },
            {
                "question": "Which animal?",
                "A": "dog",
                "B": "cat",
                "C": "bird",
                "answer": "C",
                "category": "animals",
            },
            {"question": "Which?", "answer": "A"},
        ],
    )
    with pytest.raises(E.BenchmarkError, match="line 3: missing field 'options'"):
        E.load_benchmark("mc", str(data))
    data = _jsonl(images / "mc.jsonl", [json.loads(line) for line in data.read_text().splitlines()[:2]])
    first, second = E.load_benchmark("mc", str(data))
    assert first.prompt == "Look.\nWhich colour?\nA. red\nB. blue" and first.references == ["B"]
    assert second.image is None and second.choices == ["dog", "cat", "bird"] and second.category == "animals"


def test_caption_file_missing_captions(images):
    data = _jsonl(
        images / "cap.jsonl", [{"image": "img0.png", "captions": ["a red square"]}, {"image": "img1.png"}]
    )
    with pytest.raises(E.BenchmarkError, match="line 2: missing field 'captions' or 'caption'"):
        E.load_benchmark("caption", str(data))


# -- the model folder ------------------------------------------------------------------------------------


def test_not_a_tinylmm_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="model folder not found"):
        G.check_checkpoint(tmp_path / "missing")
    with pytest.raises(ValueError, match="no config.json"):
        G.check_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(
        ValueError, match="model_type 'llama', which AutoModelForImageTextToText does not load"
    ):
        E.load_model(tmp_path)


# -- generation and scoring ------------------------------------------------------------------------------


def _samples(images):
    prompts = ["Is there a circle in the image?", "Is the red square left of the blue ring?", "Where?"]
    return [E.Sample(i, p, ["yes"], str(images / f"img{i % 3}.png")) for i, p in enumerate(prompts * 2)]


def test_batched_left_padded_greedy_equals_one_by_one(model, images):
    samples = _samples(images)
    one = E.generate_answers(*model, samples, batch_size=1, max_new_tokens=4, progress=False)
    batched = E.generate_answers(*model, samples, batch_size=4, max_new_tokens=4, progress=False)
    assert batched == one
    assert model[1].tokenizer.padding_side == "left"  # restored, whatever it was


def test_blank_images_change_what_the_model_sees(model, images):
    grey = G._open_image(str(images / "img0.png"), blank=True)
    assert [colour for _, colour in grey.getcolors()] == [G.BLANK_GREY] and grey.size == (48, 48)
    seen = []
    hook = model[0].model.vision_tower.register_forward_pre_hook(
        lambda module, args: seen.append(args[0].clone())
    )
    try:
        samples = _samples(images)[:1]
        E.generate_answers(*model, samples, max_new_tokens=1, progress=False)
        E.generate_answers(*model, samples, max_new_tokens=1, progress=False, blank_images=True)
    finally:
        hook.remove()
    real, blank = seen
    assert not torch.equal(real, blank)
    assert blank.flatten(2).std(-1).max() < 1e-5  # one grey value per channel


def test_score_per_category():
    samples = [
        E.Sample(0, "q", ["yes"], category="random"),
        E.Sample(1, "q", ["no"], category="random"),
        E.Sample(2, "q", ["yes"], category="adversarial"),
        E.Sample(3, "q", ["no"], category="adversarial"),
    ]
    result = E.score("pope", samples, ["Yes", "No, there is not.", "yes", "yes"])
    assert result["per_category"]["random"]["accuracy"] == 1.0
    assert result["per_category"]["adversarial"]["accuracy"] == 0.5
    assert result["per_category"]["adversarial"]["yes_ratio"] == 1.0
    assert result["overall"]["n"] == 4 and result["overall"]["accuracy"] == 0.75


def test_cli_eval_writes_results(checkpoint, images, tmp_path, capsys):
    data = _jsonl(
        images / "pope.jsonl",
        [
            {
                "image": f"img{i % 3}.png",
                "text": "Is there a circle in the image?",
                "label": label,
                "category": split,
            }
            for i, (label, split) in enumerate([("yes", "random"), ("no", "random"), ("yes", "popular")])
        ],
    )
    out = tmp_path / "result.json"
    code = cli(
        [
            "eval",
            "--model",
            str(checkpoint),
            "--task",
            "pope",
            "--data",
            str(data),
            "--batch-size",
            "2",
            "--max-new-tokens",
            "2",
            "--output",
            str(out),
        ]
    )
    assert code == 0
    result = json.loads(out.read_text())
    assert result["task"] == "pope" and len(result["predictions"]) == 3
    assert set(result["per_category"]) == {"random", "popular"}
    for key in ("accuracy", "precision", "recall", "f1", "yes_ratio"):
        assert 0.0 <= result["overall"][key] <= 1.0
    assert "| overall | 3 |" in capsys.readouterr().out
