"""What the demo leaves for a reader: a smoke run says it is one, the figure is readable, the final folder's
model card holds the scores, and the command ends with how to talk to the model."""

import argparse
import json
import math

import pytest

from trainers.demo import pipeline


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    capture = pytest.MonkeyPatch()
    lines = []
    capture.setattr("builtins.print", lambda *a, **k: lines.append(" ".join(map(str, a))))
    try:
        status = pipeline.run(argparse.Namespace(out=str(out), quick=True, seed=None, threads=1))
    finally:
        capture.undo()
    assert status == 0
    return out, "\n".join(lines)


def test_quick_run_says_it_is_a_smoke_run_and_how_to_chat(quick_run):
    out, printed = quick_run
    assert "smoke run" in printed.lower()
    assert printed.strip().splitlines()[-1] == f"Talk to the model: tinylmm chat --model {out / 'sft'}"
    report = (out / "report.md").read_text()
    assert "**Smoke run** (`--quick`)" in report.split("|")[0]  # before the first table
    assert json.loads((out / "metrics.json").read_text())["settings"]["smoke"] is True


def test_prompt_is_recorded_with_the_scores(quick_run):
    out, _ = quick_run
    metrics = json.loads((out / "metrics.json").read_text())
    predictions = json.loads((out / "predictions.json").read_text())
    suffix = "Answer the question using a single word or phrase."
    assert metrics["prompt"]["suffix"] == predictions["prompt"]["vqa"]["suffix"] == suffix
    assert f"suffix {suffix!r}" in (out / "report.md").read_text()


def test_every_folder_has_a_model_card_and_the_final_one_its_scores(quick_run):
    out, _ = quick_run
    for stage in ("build", "align", "sft"):
        card = (out / stage / "README.md").read_text()
        assert "pipeline_tag: image-text-to-text" in card and "fine-tuned version of" not in card
        assert "| vision encoder | `clip_vision_model`" in card and "AutoModelForImageTextToText" in card
    sft = (out / "sft" / "README.md").read_text()
    training = sft.split("## Training")[1].split("## Evaluation")[0]
    assert "| 1 | demo/align |" in training and "| 2 | demo/sft |" in training and "sft.json" in training
    evaluation = sft.split("## Evaluation")[1].split("## Use")[0]
    assert "| vqa |" in evaluation and "| vqa (blank images) |" in evaluation and "| pope |" in evaluation


def _metrics(values):
    types = ["colour", "count", "existence"]
    return {
        "vqa_exact_match": {"per_type": dict(zip(types, values))},
        "blind_vqa_exact_match": {"per_type": dict.fromkeys(types, 0.0)},
    }


def test_loss_axis_reads_in_plain_numbers_and_zero_scores_are_drawn():
    narrow = {"align": [(1, 4.61), (2, 4.55), (3, 4.50)], "sft": [(1, 4.4), (2, 4.3)]}
    fig = pipeline.figure(narrow, _metrics([0.0, 0.5, 1.0]))
    fig.canvas.draw()
    loss, bars = fig.axes
    assert loss.get_yscale() == "linear"
    labels = [t.get_text() for t in loss.get_yticklabels() if t.get_text()]
    assert labels and all("10^" not in t and "times" not in t for t in labels)
    # Every bar is drawn and labelled with its value, a 0 % score too.
    values = [t.get_text() for t in bars.texts]
    assert len(bars.patches) == 6 and values.count("0") == 4 and "50" in values and "100" in values

    wide = {"align": [(s, 4.6 * math.exp(-s / 200)) for s in range(1, 1000, 50)]}
    fig = pipeline.figure(wide, _metrics([0.1, 0.2, 0.3]))
    fig.canvas.draw()
    loss = fig.axes[0]
    assert loss.get_yscale() == "log"
    labels = [t.get_text() for t in loss.get_yticklabels() if t.get_text()]
    assert {"0.1", "1"} <= set(labels) and not any("10^" in t or "\\times" in t for t in labels), labels
