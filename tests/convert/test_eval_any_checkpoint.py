"""`tinylmm eval` on any AutoModelForImageTextToText checkpoint: a transformers LLaVA folder and its tinylmm
conversion, scored side by side with the same prompts, batching and metrics, answer alike."""

import json

import pytest
from _convert_fixtures import llava_checkpoint, onevision_checkpoint
from _processor_fixtures import rgb

from trainers.convert import convert
from trainers.evaluation import evaluate_model, load_model
from trainers.evaluation.generation import check_checkpoint


@pytest.fixture
def pope(tmp_path):
    rows = []
    for i in range(5):  # non-square images of different sizes; batches of 2 pad on the left
        rgb(40 + 7 * i, 30 + 5 * i, seed=i).save(tmp_path / f"img{i}.png")
        question = "is there a red circle in the image ?" if i % 2 else "is there a square ?"
        rows.append({"image": f"img{i}.png", "text": question, "label": "yes" if i % 2 else "no"})
    (tmp_path / "pope.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path / "pope.jsonl"


def _predictions(folder, data):
    result = evaluate_model(load_model(folder, device="cpu"), "pope", str(data), batch_size=2, progress=False)
    return [p["prediction"] for p in result["predictions"]], result["overall"]


def test_llava_and_its_conversion_answer_alike(tmp_path, pope):
    llava_checkpoint(tmp_path / "llava")
    convert(tmp_path / "llava", tmp_path / "tinylmm", chat_template="source")  # the same prompt text
    theirs, their_scores = _predictions(tmp_path / "llava", pope)
    ours, our_scores = _predictions(tmp_path / "tinylmm", pope)
    assert theirs == ours and any(theirs)
    assert their_scores == our_scores


def test_onevision_folder_evaluates_without_torchvision(tmp_path, pope):
    onevision_checkpoint(tmp_path / "ov")
    convert(tmp_path / "ov", tmp_path / "tinylmm", chat_template="source")
    theirs, _ = _predictions(tmp_path / "ov", pope)
    ours, _ = _predictions(tmp_path / "tinylmm", pope)
    assert theirs == ours and any(theirs)


def test_a_tinyllava_folder_is_sent_to_convert(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "tinyllava"}))
    with pytest.raises(ValueError, match="tinylmm convert"):
        check_checkpoint(tmp_path)
