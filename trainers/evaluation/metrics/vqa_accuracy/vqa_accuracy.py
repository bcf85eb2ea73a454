"""VQAv2 accuracy: answers normalised as the VQAv2 evaluation does, credit from how many humans agree."""

import re

import datasets
import evaluate

_DESCRIPTION = """
VQA accuracy (Antol et al. 2015; Goyal et al. 2017). Each question has several human answers (ten in
VQAv2). An answer earns min(#humans that gave it / 3, 1). As the official evaluation does, this is
averaged over the ten ways of leaving one human out, so an answer that 3 of 10 humans gave scores 0.9
and one that 4 or more gave scores 1.0 (`leave_one_out=False` gives the plain min(n / 3, 1)).

Before matching, answers and references are normalised the VQAv2 way: newlines and tabs become spaces;
punctuation is removed (or becomes a space where it joins two words); a period is dropped unless it is a
decimal point; the text is lower-cased; number words become digits ("two" -> "2"); the articles "a",
"an", "the" are dropped; common contractions written without their apostrophe are restored ("dont" ->
"don't").
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): generated answers.
    references (`list` of `list` of `str`): the human answers of each question.
    leave_one_out (`bool`, defaults to `True`): average over the leave-one-human-out subsets.
Returns:
    accuracy (mean over questions, 0-1) and scores (one per question).
Examples:
    >>> vqa = evaluate.load("trainers/metrics/vqa_accuracy")
    >>> vqa.compute(predictions=["Two."], references=[["2"] * 10])["accuracy"]
    1.0
"""

_CITATION = """
@inproceedings{goyal2017making,
  title={Making the V in VQA Matter: Elevating the Role of Image Understanding in Visual Question Answering},
  author={Goyal, Yash and Khot, Tejas and Summers-Stay, Douglas and Batra, Dhruv and Parikh, Devi},
  booktitle={CVPR},
  year={2017}
}
"""

_NUMBERS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
_ARTICLES = {"a", "an", "the"}
# Contractions people type without the apostrophe, restored so that both spellings match.
_CONTRACTIONS = {
    "aint": "ain't",
    "arent": "aren't",
    "cant": "can't",
    "couldnt": "couldn't",
    "couldve": "could've",
    "didnt": "didn't",
    "doesnt": "doesn't",
    "dont": "don't",
    "hadnt": "hadn't",
    "hasnt": "hasn't",
    "havent": "haven't",
    "hes": "he's",
    "im": "i'm",
    "isnt": "isn't",
    "itll": "it'll",
    "ive": "i've",
    "lets": "let's",
    "mightnt": "mightn't",
    "mustnt": "mustn't",
    "shant": "shan't",
    "shes": "she's",
    "shouldnt": "shouldn't",
    "shouldve": "should've",
    "thats": "that's",
    "theres": "there's",
    "theyre": "they're",
    "theyve": "they've",
    "wasnt": "wasn't",
    "werent": "weren't",
    "whats": "what's",
    "wheres": "where's",
    "whos": "who's",
    "wont": "won't",
    "wouldnt": "wouldn't",
    "wouldve": "would've",
    "youd": "you'd",
    "youll": "you'll",
    "youre": "you're",
    "youve": "you've",
}
_PUNCTUATION = set(';/[]"{}()=+\\_-><@`,?!*#%^&$~|:')
_DIGIT_COMMA = re.compile(r"(\d),(\d)")
_PERIOD = re.compile(r"(?<!\d)\.|\.(?!\d)")  # any period that is not a decimal point


def normalize_answer(answer: str) -> str:
    """The VQAv2 normalisation of one answer."""
    text = answer.replace("\n", " ").replace("\t", " ").strip()
    text = _DIGIT_COMMA.sub(r"\1\2", text)  # 1,000 -> 1000
    out = []
    for i, ch in enumerate(text):
        if ch in _PUNCTUATION:
            # Glued between two word characters ("black-white"), punctuation separates; elsewhere it goes.
            joins = 0 < i < len(text) - 1 and text[i - 1].isalnum() and text[i + 1].isalnum()
            out.append(" " if joins else "")
        else:
            out.append(ch)
    text = _PERIOD.sub("", "".join(out))
    words = []
    for word in text.lower().split():
        word = _NUMBERS.get(word, word)
        if word not in _ARTICLES:
            words.append(_CONTRACTIONS.get(word, word))
    return " ".join(words)


def answer_score(prediction: str, answers: list[str], leave_one_out: bool = True) -> float:
    if not answers:
        raise ValueError("a VQA question needs at least one reference answer.")
    prediction = normalize_answer(prediction)
    matches = [normalize_answer(a) == prediction for a in answers]
    n = sum(matches)
    if not leave_one_out or len(answers) == 1:
        return min(n / 3, 1.0)
    # Leave out each human in turn: the others that match are n - 1 if that human matched, else n.
    return sum(min((n - m) / 3, 1.0) for m in matches) / len(answers)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class VqaAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("string"),
                    "references": datasets.Sequence(datasets.Value("string")),
                }
            ),
            reference_urls=["https://visualqa.org/evaluation.html"],
        )

    def _compute(self, predictions, references, leave_one_out=True):
        scores = [answer_score(p, r, leave_one_out) for p, r in zip(predictions, references)]
        return {"accuracy": sum(scores) / len(scores) if scores else 0.0, "scores": scores}
