"""`tinylmm eval` says how it asked: the prompt format, suffix and chat template go into its results file and
under its table, and the scores into the evaluated folder's model card."""

import json

from PIL import Image

from trainers.cli import main as cli
from trainers.demo import QUICK
from trainers.demo.pipeline import build_start

SUFFIX = "Answer the question using a single word or phrase."


def test_eval_records_prompt_and_suffix_and_adds_scores_to_the_model_card(tmp_path, capsys):
    folder = tmp_path / "model"
    build_start(folder, QUICK)
    for i, colour in enumerate(("red", "blue")):
        Image.new("RGB", (48, 48), colour).save(tmp_path / f"img{i}.png")
    rows = [
        {"question_id": i, "image": f"img{i}.png", "text": "Is there a circle in the image?", "label": "yes"}
        for i in range(2)
    ]
    data = tmp_path / "pope.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "scores.json"
    base = ["eval", "--model", str(folder), "--task", "pope", "--data", str(data)]

    assert cli([*base, "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    table_end = printed.index("| overall |")
    assert f"suffix {SUFFIX!r}" in printed[table_end:] and "chat template chatml" in printed[table_end:]
    result = json.loads(out.read_text())
    assert result["prompt"] == {"format": "{question}\n{suffix}", "suffix": SUFFIX, "chat_template": "chatml"}
    assert len(result["predictions"]) == 2
    card = (folder / "README.md").read_text()
    evaluation = card.split("## Evaluation")[1].split("## Use")[0]
    assert "| pope |" in evaluation and SUFFIX in evaluation

    # Another suffix: said under the table, and it replaces the earlier row of the same task and data.
    assert cli([*base, "--prompt_suffix", ""]) == 0
    assert "the question alone, no suffix" in capsys.readouterr().out
    evaluation = (folder / "README.md").read_text().split("## Evaluation")[1].split("## Use")[0]
    assert evaluation.count("| pope |") == 1 and SUFFIX not in evaluation
