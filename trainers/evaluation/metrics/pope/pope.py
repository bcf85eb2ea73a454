"""POPE: yes/no object-probing accuracy, precision, recall, F1 and yes-ratio (arXiv 2305.10355)."""

import re

import datasets
import evaluate

_DESCRIPTION = """
POPE asks "Is there a <object> in the image?" and scores the yes/no answers, "yes" being the positive
class. An answer is read from its first sentence: it is "no" when that sentence holds the word "no" or
"not", and "yes" otherwise (the convention the LLaVA family of papers report with). Answers that are
empty are read as "yes" by that convention; their number is returned as `empty` so that it is never
silent.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): generated answers.
    references (`list` of `str`): "yes" or "no".
Returns:
    accuracy, precision, recall, f1, yes_ratio (fractions in 0-1), and the counts tp, fp, tn, fn, empty.
Examples:
    >>> pope = evaluate.load("trainers/metrics/pope")
    >>> pope.compute(predictions=["Yes, there is.", "No, there is not."], references=["yes", "yes"])["recall"]
    0.5
"""

_CITATION = """
@inproceedings{li2023pope,
  title={Evaluating Object Hallucination in Large Vision-Language Models},
  author={Li, Yifan and Du, Yifan and Zhou, Kun and Wang, Jinpeng and Zhao, Wayne Xin and Wen, Ji-Rong},
  booktitle={EMNLP},
  year={2023}
}
"""

_WORDS = re.compile(r"[a-z']+")


def parse_yes_no(answer: str) -> str:
    """Read an answer as "no" when its first sentence says "no" or "not", else as "yes"."""
    first = answer.strip().split(".")[0].lower()
    return "no" if {"no", "not"} & set(_WORDS.findall(first)) else "yes"


def _label(reference: str) -> str:
    label = reference.strip().lower()
    if label not in ("yes", "no"):
        raise ValueError(f'POPE references must be "yes" or "no", got {reference!r}.')
    return label


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Pope(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
            reference_urls=["https://arxiv.org/abs/2305.10355"],
        )

    def _compute(self, predictions, references):
        tp = fp = tn = fn = 0
        for prediction, reference in zip(predictions, references):
            said_yes = parse_yes_no(prediction) == "yes"
            if _label(reference) == "yes":
                tp, fn = tp + said_yes, fn + (not said_yes)
            else:
                fp, tn = fp + said_yes, tn + (not said_yes)
        total = tp + fp + tn + fn
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        return {
            "accuracy": (tp + tn) / total if total else 0.0,
            "precision": precision,
            "recall": recall,
            "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
            "yes_ratio": (tp + fp) / total if total else 0.0,
            "tp": tp,
            "fp": fp,
            "tn": tn,
            "fn": fn,
            "empty": sum(not p.strip() for p in predictions),
        }
