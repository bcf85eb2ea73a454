"""Exact match after light normalisation; a reference may be one answer or a list of accepted ones."""

import re
import string
from collections import Counter

import datasets
import evaluate

_DESCRIPTION = """
The fraction of predictions equal to a reference. By default both sides are normalised first: lower case,
punctuation removed, the articles "a", "an", "the" dropped, number words up to ten written as digits, and
white space collapsed, so that "Two." matches "2" and "the red circle" matches "red circle". A prediction
matches when it equals any one of its references. `f1` is the word-overlap F1 between the normalised
prediction and its closest reference (the SQuAD convention), a softer score for longer answers.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): generated answers.
    references (`list` of `list` of `str`): the accepted answers of each question (one or more).
    normalize (`bool`, defaults to `True`): normalise before comparing; `False` compares the stripped text.
Returns:
    exact_match (0-1), f1 (0-1) and scores (1.0 or 0.0 per prediction).
Examples:
    >>> em = evaluate.load("trainers/metrics/exact_match")
    >>> em.compute(predictions=["The Circle."], references=[["circle"]])["exact_match"]
    1.0
"""

_NUMBERS = dict(zip("zero one two three four five six seven eight nine ten".split(), map(str, range(11))))
_ARTICLES = {"a", "an", "the"}
_PUNCTUATION = re.compile(f"[{re.escape(string.punctuation)}]")


def normalize_text(text: str) -> str:
    words = _PUNCTUATION.sub(" ", text.lower()).split()
    return " ".join(_NUMBERS.get(w, w) for w in words if w not in _ARTICLES)


def word_f1(prediction: str, reference: str) -> float:
    pred, ref = prediction.split(), reference.split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if not common:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ExactMatch(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("string"),
                    "references": datasets.Sequence(datasets.Value("string")),
                }
            ),
        )

    def _compute(self, predictions, references, normalize=True):
        norm = normalize_text if normalize else str.strip
        scores = [float(any(norm(p) == norm(r) for r in refs)) for p, refs in zip(predictions, references)]
        f1 = [max(word_f1(norm(p), norm(r)) for r in refs) for p, refs in zip(predictions, references)]
        n = len(scores)
        return {
            "exact_match": sum(scores) / n if n else 0.0,
            "f1": sum(f1) / n if n else 0.0,
            "scores": scores,
        }
