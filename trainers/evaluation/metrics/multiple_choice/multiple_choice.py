"""Multiple-choice accuracy with option-letter extraction (ScienceQA / MMBench style)."""

import re

import datasets
import evaluate

_DESCRIPTION = """
Accuracy on multiple-choice questions whose answer is an option letter. The letter is read from the
prediction in this order: the answer is a single letter ("b", "(B)", "B."); it starts with a capital
letter closed by ".", ")", ":" or "," ("B. dog", "(B) dog"); a sentence such as "The answer is B" or
"Answer: (B)"; and, when the option texts are given, the one option whose text the prediction contains. A prediction that yields no valid letter is wrong and
is counted in `unparsed`.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): generated answers.
    references (`list` of `str`): the correct letter of each question ("A", "B", ...).
    choices (`list` of `list` of `str`, *optional*): the option texts of each question, in letter order;
        they bound the valid letters and allow matching an answer written as the option's text.
Returns:
    accuracy (0-1), unparsed (count), and the extracted letter of each prediction (None when unparsed).
Examples:
    >>> mc = evaluate.load("trainers/metrics/multiple_choice")
    >>> mc.compute(predictions=["The answer is (B)."], references=["B"])["accuracy"]
    1.0
"""

# The whole answer is one letter, in any case: "b", "(B)", "B.".
_ALONE = re.compile(r"\(?([A-Za-z])[).:]?")
# A leading capital closed by punctuation: "B. dog", "(C) cat"; "A dog" is an article, not option A.
_LEADING = re.compile(r"^\(?([A-Z])[.):,]")
_SENTENCE = re.compile(r"answer(?: is|:)\s*\(?([A-Z])\b", re.IGNORECASE)
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def extract_letter(prediction: str, options: list[str] | None = None) -> str | None:
    valid = _LETTERS[: len(options)] if options else _LETTERS
    text = prediction.strip()
    alone = _ALONE.fullmatch(text)
    if alone and alone.group(1).upper() in valid:
        return alone.group(1).upper()
    for pattern in (_LEADING, _SENTENCE):
        match = pattern.search(text)
        if match and match.group(1).upper() in valid:
            return match.group(1).upper()
    if options:
        lowered = text.lower()
        hits = [valid[i] for i, option in enumerate(options) if option.strip() and option.lower() in lowered]
        if len(hits) == 1:
            return hits[0]
    return None


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MultipleChoice(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references, choices=None):
        choices = choices or [None] * len(predictions)
        if len(choices) != len(predictions):
            raise ValueError(f"choices has {len(choices)} entries for {len(predictions)} predictions.")
        letters = [extract_letter(p, c) for p, c in zip(predictions, choices)]
        correct = [letter == r.strip().upper() for letter, r in zip(letters, references)]
        return {
            "accuracy": sum(correct) / len(correct) if correct else 0.0,
            "unparsed": sum(letter is None for letter in letters),
            "letters": letters,
        }
