"""Scores of predictions against references, overall and per category, with the project's `evaluate`
metric modules (metrics/, loaded by path: nothing is fetched from a hub)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from .benchmarks import Sample

METRICS_DIR = Path(__file__).resolve().parent / "metrics"


_METRICS: dict[str, Any] = {}


def load_metric(name: str):
    """One of the project's evaluate modules (pope, vqa_accuracy, exact_match, multiple_choice), by path."""
    import evaluate

    if name not in _METRICS:
        _METRICS[name] = evaluate.load(str(METRICS_DIR / name))
    return _METRICS[name]


def _score_group(task: str, samples: list[Sample], predictions: list[str]) -> dict[str, float]:
    if task == "pope":
        result = load_metric("pope").compute(
            predictions=predictions, references=[s.references[0] for s in samples]
        )
        keep = ("accuracy", "precision", "recall", "f1", "yes_ratio", "unparsed")
        return {k: result[k] for k in keep}
    if task == "vqa":
        vqa = load_metric("vqa_accuracy").compute(
            predictions=predictions, references=[s.references for s in samples]
        )
        em = load_metric("exact_match").compute(
            predictions=predictions, references=[[s.extra["majority"]] for s in samples]
        )
        return {"vqa_accuracy": vqa["accuracy"], "exact_match": em["exact_match"]}
    if task == "mc":
        result = load_metric("multiple_choice").compute(
            predictions=predictions,
            references=[s.references[0] for s in samples],
            choices=[s.choices for s in samples],
        )
        return {"accuracy": result["accuracy"], "unparsed": result["unparsed"]}
    result = load_metric("exact_match").compute(
        predictions=predictions, references=[s.references for s in samples]
    )
    return {"exact_match": result["exact_match"], "f1": result["f1"]}


def score(task: str, samples: list[Sample], predictions: list[str]) -> dict[str, Any]:
    """Metrics overall and per category (POPE: per split; VQAv2: per answer type)."""
    if len(samples) != len(predictions):
        raise ValueError(f"{len(predictions)} predictions for {len(samples)} samples.")
    groups: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        groups[s.category].append(i)
    per_category = {
        cat: {"n": len(idx), **_score_group(task, [samples[i] for i in idx], [predictions[i] for i in idx])}
        for cat, idx in sorted(groups.items())
    }
    return {
        "overall": {"n": len(samples), **_score_group(task, samples, predictions)},
        "per_category": per_category,
    }


def format_table(result: dict[str, Any]) -> str:
    """A Markdown table: one row per category and the overall row; fractions shown as percentages."""
    rows = [*result["per_category"].items(), ("overall", result["overall"])]
    keys = [k for k in result["overall"] if k != "n"]
    counts = {"unparsed"}
    lines = ["| category | n | " + " | ".join(keys) + " |", "|---|---:|" + "---:|" * len(keys)]
    for name, metrics in rows:
        cells = [str(metrics[k]) if k in counts else f"{100 * metrics[k]:.1f}" for k in keys]
        lines.append(f"| {name} | {metrics['n']} | " + " | ".join(cells) + " |")
    unparsed = result["overall"].get("unparsed")
    if unparsed:
        lines.append(
            f"\n{unparsed} of {result['overall']['n']} answers could not be read as an answer (empty, or no "
            "word / choice in them) and were scored as wrong."
        )
    return "\n".join(lines)
