"""The evaluate modules shipped in trainers/metrics, loaded by path, on hand-written cases."""

from pathlib import Path

import evaluate
import pytest

METRICS = Path(__file__).resolve().parents[2] / "trainers" / "evaluation" / "metrics"


@pytest.fixture(scope="module")
def load():
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = evaluate.load(str(METRICS / name))
        return cache[name]

    return get


# -- POPE ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer, read_as",
    [
        ("Yes", "yes"),
        ("yes.", "yes"),
        ("Yes, there is a dog in the image.", "yes"),
        ("No", "no"),
        ("No, there is not.", "no"),
        ("There is not a dog in the image.", "no"),
        ("NO.", "no"),
        # Only the first sentence counts.
        ("Yes. There is no cat next to it.", "yes"),
        ("No. But there is a yes sign.", "no"),
        # "not" inside a longer word is not a negation.
        ("Nothing hides it; yes.", "yes"),
    ],
)
def test_pope_reads_yes_no_from_first_sentence(load, answer, read_as):
    result = load("pope").compute(predictions=[answer], references=["yes"])
    assert result["tp" if read_as == "yes" else "fn"] == 1


def test_pope_counts_and_rates(load):
    predictions = ["Yes", "yes, it is", "No, there is not.", "no", "Yes", "No"]
    references = ["yes", "yes", "yes", "no", "no", "no"]
    r = load("pope").compute(predictions=predictions, references=references)
    assert (r["tp"], r["fn"], r["fp"], r["tn"]) == (2, 1, 1, 2)
    assert r["accuracy"] == pytest.approx(4 / 6)
    assert r["precision"] == pytest.approx(2 / 3)
    assert r["recall"] == pytest.approx(2 / 3)
    assert r["f1"] == pytest.approx(2 / 3)
    assert r["yes_ratio"] == pytest.approx(3 / 6)


def test_pope_answer_without_a_word_is_unparsed_and_wrong_never_yes(load):
    # Empty, blank, punctuation-only and digit-only answers say neither yes nor no.
    predictions = ["", "  ", ".", "2", "No", "Yes"]
    references = ["no", "yes", "yes", "no", "no", "yes"]
    r = load("pope").compute(predictions=predictions, references=references)
    assert r["unparsed"] == 4
    assert (r["tp"], r["fp"], r["tn"], r["fn"]) == (1, 0, 1, 0)
    assert r["accuracy"] == pytest.approx(2 / 6)  # unparsed answers are wrong
    assert r["recall"] == pytest.approx(1 / 3)  # two of the three positives were not answered
    assert r["precision"] == 1.0 and r["yes_ratio"] == pytest.approx(1 / 6)


def test_pope_all_empty_answers_score_zero_not_perfect(load):
    # A run that generated nothing (e.g. no batch ran) must not look like a model that said "yes" to all.
    r = load("pope").compute(predictions=[""] * 4, references=["yes"] * 4)
    assert r["unparsed"] == 4 and r["accuracy"] == 0.0 and r["recall"] == 0.0 and r["f1"] == 0.0


def test_pope_all_no_has_zero_f1_not_an_error(load):
    r = load("pope").compute(predictions=["no", "no"], references=["yes", "no"])
    assert r["precision"] == 0.0 and r["f1"] == 0.0 and r["yes_ratio"] == 0.0


def test_pope_rejects_a_reference_that_is_not_yes_or_no(load):
    with pytest.raises(ValueError, match='must be "yes" or "no"'):
        load("pope").compute(predictions=["yes"], references=["maybe"])


# -- VQA accuracy --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prediction, answer",
    [
        ("Two.", "2"),
        ("two", "2"),
        ("none", "0"),
        ("The red circle", "red circle"),
        ("an apple!", "apple"),
        ("black-white", "black white"),
        ("dont know", "don't know"),
        ("Yes\n", "yes"),
        ("1,000", "1000"),
        ("2.5", "2.5"),
    ],
)
def test_vqa_normalisation_matches(load, prediction, answer):
    assert (
        load("vqa_accuracy").compute(predictions=[prediction], references=[[answer] * 10])["accuracy"] == 1.0
    )


@pytest.mark.parametrize("prediction, answer", [("2.5", "25"), ("red", "red circle"), ("", "yes")])
def test_vqa_normalisation_keeps_distinct_answers_apart(load, prediction, answer):
    assert (
        load("vqa_accuracy").compute(predictions=[prediction], references=[[answer] * 10])["accuracy"] == 0.0
    )


def test_vqa_accuracy_counts_agreeing_humans(load):
    vqa = load("vqa_accuracy")
    answers = ["dog"] * 3 + ["cat"] * 7
    # Leave-one-out average: 3 subsets with 2 "dog" (2/3), 7 subsets with 3 (1.0) -> 0.9.
    assert vqa.compute(predictions=["dog"], references=[answers])["accuracy"] == pytest.approx(0.9)
    assert vqa.compute(predictions=["dog"], references=[answers], leave_one_out=False)["accuracy"] == 1.0
    one = ["dog"] + ["cat"] * 9
    assert vqa.compute(predictions=["dog"], references=[one], leave_one_out=False)[
        "accuracy"
    ] == pytest.approx(1 / 3)
    assert vqa.compute(predictions=["cat"], references=[answers])["accuracy"] == 1.0
    assert vqa.compute(predictions=["bird"], references=[answers])["accuracy"] == 0.0


# -- exact match ---------------------------------------------------------------------------------------


def test_exact_match_normalises_and_accepts_any_reference(load):
    em = load("exact_match")
    r = em.compute(
        predictions=["The Circle.", "three", "top  left", "", "red"],
        references=[["circle"], ["3"], ["top left"], ["yes"], ["blue", "red"]],
    )
    assert r["scores"] == [1.0, 1.0, 1.0, 0.0, 1.0]
    assert r["exact_match"] == pytest.approx(0.8)


def test_exact_match_without_normalisation_is_strict(load):
    r = load("exact_match").compute(
        predictions=["Red", " red "], references=[["red"], ["red"]], normalize=False
    )
    assert r["scores"] == [0.0, 1.0]


def test_exact_match_word_f1(load):
    r = load("exact_match").compute(predictions=["a large red circle"], references=[["small red circle"]])
    # "large red circle" vs "small red circle": 2 words in common of 3 each.
    assert r["f1"] == pytest.approx(2 / 3)
    assert r["exact_match"] == 0.0


# -- multiple choice -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prediction, letter",
    [
        ("B", "B"),
        ("(B)", "B"),
        ("B.", "B"),
        ("B. The dog", "B"),
        ("C) cat", "C"),
        ("The answer is C.", "C"),
        ("Answer: (A)", "A"),
        ("b", "B"),
        ("A horse is on the left.", None),  # "A" here is an article
        ("", None),
        ("E", None),  # only four options
    ],
)
def test_multiple_choice_letter_extraction(load, prediction, letter):
    r = load("multiple_choice").compute(
        predictions=[prediction], references=["A"], choices=[["dog", "cat", "bird", "fish"]]
    )
    assert r["letters"] == [letter]
    assert r["unparsed"] == (letter is None)


def test_multiple_choice_matches_option_text(load):
    mc = load("multiple_choice")
    r = mc.compute(
        predictions=["It is a cat.", "a dog or a cat"],
        references=["B", "B"],
        choices=[["dog", "cat"], ["dog", "cat"]],
    )
    # The second names two options: ambiguous, so unparsed rather than guessed.
    assert r["letters"] == ["B", None]
    assert r["accuracy"] == 0.5 and r["unparsed"] == 1
