"""POPE: yes/no object-probing accuracy, precision, recall, F1 and yes-ratio (arXiv 2305.10355)."""

import re

import datasets
import evaluate

_DESCRIPTION = """
POPE asks "Is there a <object> in the image?" and scores the yes/no answers, "yes" being the positive
class. An answer is read from its first sentence: it is "no" when that sentence holds the word "no" or
"not", and "yes" when it holds any other word (the convention the LLaVA family of papers report with).
An answer without a single word (no letter a-z: empty, blank, punctuation or digits only, as a model
that generated nothing gives) cannot be read: it is never counted as "yes". It is counted in `unparsed` and scored as wrong:
accuracy and recall count it in their denominators (a positive it was asked about is a missed one);
precision and the yes-ratio's numerator do not.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): generated answers.
    references (`list` of `str`): "yes" or "no".
Returns:
    accuracy, precision, recall, f1, yes_ratio (fractions in 0-1), and the counts tp, fp, tn, fn and
    unparsed (answers that hold no word; wrong whatever the reference).
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
_LETTER = re.compile(r"[a-z]")


def parse_yes_no(answer: str) -> str | None:
    """Read an answer as "no" when its first sentence says "no" or "not", as "yes" when it holds any other
    word; None when the answer holds no word at all."""
    if not _LETTER.search(answer.lower()):
        return None
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
        unparsed = unparsed_positive = 0
        for prediction, reference in zip(predictions, references):
            read = parse_yes_no(prediction)
            positive = _label(reference) == "yes"
            if read is None:
                unparsed += 1
                unparsed_positive += positive
            elif positive:
                tp, fn = tp + (read == "yes"), fn + (read == "no")
            else:
                fp, tn = fp + (read == "yes"), tn + (read == "no")
        total = tp + fp + tn + fn + unparsed
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn + unparsed_positive) if tp + fn + unparsed_positive else 0.0
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
            "unparsed": unparsed,
        }
