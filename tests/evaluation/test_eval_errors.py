"""`tinylmm eval` refuses a batch size (or token budget) below 1, and a run that generated nothing never
scores as a model that said "yes"."""

import json

import pytest
from PIL import Image

from trainers import evaluation as E
from trainers.cli import main as cli


@pytest.fixture
def pope(tmp_path):
    Image.new("RGB", (16, 16), "red").save(tmp_path / "img.png")
    path = tmp_path / "pope.jsonl"
    rows = [{"image": "img.png", "text": "Is there a circle?", "label": "yes"}] * 3
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("value", ["-1", "0"])
@pytest.mark.parametrize("option", ["--batch_size", "--batch-size", "--max_new_tokens"])
def test_cli_refuses_a_count_below_one(pope, capsys, option, value):
    with pytest.raises(SystemExit) as exit_:
        cli(["eval", "--model", "missing", "--task", "pope", "--data", str(pope), option, value])
    assert exit_.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert (
        error
        == f"tinylmm eval: error: argument {option}: must be a positive integer (1 or more), got {value}"
    )


@pytest.mark.parametrize("batch_size", [-1, 0])
def test_api_refuses_a_batch_size_below_one(pope, batch_size):
    samples = E.load_benchmark("pope", str(pope))
    message = f"batch_size must be a positive integer, got {batch_size}."
    with pytest.raises(ValueError, match=message):
        E.evaluate_model((None, None), "pope", samples, batch_size=batch_size)
    with pytest.raises(ValueError, match=message):
        E.generate_answers(None, None, samples, batch_size=batch_size)


def test_empty_answers_are_unparsed_not_yes(pope):
    samples = E.load_benchmark("pope", str(pope))
    result = E.score("pope", samples, ["", " ", "."])
    overall = result["overall"]
    assert overall["unparsed"] == 3 and overall["accuracy"] == 0.0 and overall["recall"] == 0.0
    table = E.format_table(result).splitlines()
    overall_row = next(line for line in table if line.startswith("| overall |"))
    assert table[0].endswith("| unparsed |") and overall_row.endswith("| 3 |")  # a count, not a percentage
    assert (
        table[-1]
        == "3 of 3 answers could not be read as an answer (empty, or no word / choice in them) and were scored as wrong."
    )
    assert "could not be read" not in E.format_table(E.score("pope", samples, ["yes", "no", "yes"]))
