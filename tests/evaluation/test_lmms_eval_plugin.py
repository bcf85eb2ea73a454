"""lmms-eval runs a local POPE-style task (a few lines of YAML over a local JSON file) against a tiny tinylmm
checkpoint through the `tinylmm` model its entry point registers, and answers as `tinylmm eval` does."""

import json
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
import tomllib
from PIL import Image

lmms_eval = pytest.importorskip("lmms_eval")  # optional: pip install --no-deps lmms-eval + tinylmm[eval]

from trainers.demo import QUICK  # noqa: E402
from trainers.demo.pipeline import build_start  # noqa: E402
from trainers.evaluation import SHORT_ANSWER, evaluate_model, load_model  # noqa: E402

TASK = """
task: tiny_pope
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_visual: !function tiny_pope_utils.doc_to_visual
doc_to_text: !function tiny_pope_utils.doc_to_text
doc_to_target: label
generation_kwargs:
  max_new_tokens: 4
  do_sample: false
process_results: !function tiny_pope_utils.process_results
metric_list:
  - metric: accuracy
    aggregation: mean
    higher_is_better: true
"""
UTILS = f"""
from PIL import Image


def doc_to_visual(doc):
    return [Image.open(doc["image"]).convert("RGB")]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["text"] + "\\n" + {SHORT_ANSWER!r}


def process_results(doc, results):
    answer = results[0].strip().lower()
    return {{"accuracy": float(answer.startswith(doc["label"]))}}
"""


def _entry_point():
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    value = pyproject["project"]["entry-points"]["lmms_eval.models"]["tinylmm"]
    return EntryPoint(name="tinylmm", value=value, group="lmms_eval.models")


def test_lmms_eval_runs_a_local_task_through_the_plugin(tmp_path, monkeypatch):
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.models import MODEL_REGISTRY_V2
    from lmms_eval.tasks import TaskManager

    checkpoint = tmp_path / "ckpt"
    build_start(checkpoint, QUICK)
    rows = []
    for i, colour in enumerate(("red", "blue", "green", "yellow")):
        Image.new("RGB", (48, 40), colour).save(tmp_path / f"img{i}.png")
        rows.append(
            {"image": str(tmp_path / f"img{i}.png"), "text": f"Is there a {colour} circle?", "label": "yes"}
        )
    data = tmp_path / "pope.json"
    data.write_text(json.dumps(rows))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "tiny_pope.yaml").write_text(TASK.format(data=data))
    (tasks / "tiny_pope_utils.py").write_text(UTILS)
    monkeypatch.syspath_prepend(str(tasks))  # the task's !function module

    MODEL_REGISTRY_V2.register_manifest(_entry_point().load()(), overwrite=True)  # what the entry point adds
    # lmms-eval 0.7.3 patches filelock through `filelock._api`, which filelock 4 (pinned here) no longer has;
    # the patch guards nested dataset loads this one-file task does not make.
    import lmms_eval.evaluator as evaluator

    evaluator._enable_reentrant_filelocks._patched = True
    out = simple_evaluate(
        model="tinylmm",
        model_args=f"pretrained={checkpoint},device=cpu,batch_size=2",
        tasks=["tiny_pope"],
        task_manager=TaskManager(include_path=str(tasks)),
        log_samples=True,
    )
    responses = [
        s["filtered_resps"][0] for s in sorted(out["samples"]["tiny_pope"], key=lambda s: s["doc_id"])
    ]
    assert len(responses) == 4 and "accuracy,none" in out["results"]["tiny_pope"]

    # The same prompts through `tinylmm eval`'s own path give the same answers.
    pope = tmp_path / "pope.jsonl"
    pope.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ours = evaluate_model(
        load_model(checkpoint, device="cpu"),
        "pope",
        str(pope),
        batch_size=2,
        progress=False,
        max_new_tokens=4,
    )
    assert [p["prediction"] for p in ours["predictions"]] == [r.strip() for r in responses]
