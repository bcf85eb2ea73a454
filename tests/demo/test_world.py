"""The synthetic world: deterministic scenes, correct captions / answers / POPE probes, a closed tokenizer."""

import random
import re
from collections import Counter

import pytest

from trainers.demo import world as W


@pytest.fixture(scope="module")
def scenes():
    return W.generate_scenes(300, seed=0, held_out=False)


def test_generation_is_deterministic():
    a = W.generate_scenes(50, seed=3, held_out=False)
    b = W.generate_scenes(50, seed=3, held_out=False)
    assert a == b
    assert [W.render(s).tobytes() for s in a[:5]] == [W.render(s).tobytes() for s in b[:5]]
    assert W.qa_rows(a[:20], seed=1)[5]["messages"] == W.qa_rows(b[:20], seed=1)[5]["messages"]
    assert W.generate_scenes(50, seed=4, held_out=False) != a


def test_split_is_by_layout():
    train = W.generate_scenes(2000, seed=0, held_out=False)
    test = W.generate_scenes(300, seed=0, held_out=True)
    assert not {s.key for s in train} & {s.key for s in test}
    assert all(s.held_out for s in test) and not any(s.held_out for s in train)
    # The held-out side is not a skewed corner of the world: every object count is there.
    assert {len(s.objects) for s in test} == {1, 2, 3, 4}


def test_scenes_are_well_formed(scenes):
    for s in scenes:
        assert 1 <= len(s.objects) <= 4
        assert len({o.cell for o in s.objects}) == len(s.objects)
        assert len({(o.shape, o.colour) for o in s.objects}) == len(s.objects)
    counts = Counter(o.shape for s in scenes for o in s.objects)
    # Skewed frequencies (what POPE's popular split exploits): circles outnumber crosses.
    assert counts["circle"] > 1.5 * counts["cross"]


def test_render_draws_each_object_in_its_cell():
    scene = W.Scene((W.Obj("square", "red", "large", 0), W.Obj("circle", "blue", "large", 8)), seed=1)
    img = W.render(scene)
    assert img.size == (48, 48)
    r, g, b = img.getpixel((8, 8))  # centre of the top-left cell
    assert r > 150 and g < 100 and b < 100
    r, g, b = img.getpixel((40, 40))  # centre of the bottom-right cell
    assert b > 150 and r < 120
    assert img.getpixel((24, 24)) == W.BACKGROUND  # the empty centre cell
    assert W.render(scene, image_size=96).size == (96, 96)


def test_caption_lists_every_object_with_its_position():
    scene = W.Scene((W.Obj("ring", "green", "small", 2), W.Obj("cross", "white", "large", 4)), seed=0)
    assert W.caption(scene) == (
        "There are 2 shapes, a small green ring at the top right, a large white cross at the center."
    )


def test_inventory_names_every_kind_and_answers_presence():
    scene = W.Scene(
        (
            W.Obj("circle", "red", "large", 0),
            W.Obj("circle", "blue", "small", 8),
            W.Obj("ring", "blue", "large", 4),
        ),
        seed=0,
    )
    assert W.inventory(scene, "shape") == (
        "circle: yes, large red top left, small blue bottom right. square: no. triangle: no. diamond: no. "
        "cross: no. ring: yes, large blue center."
    )
    assert W.inventory(scene, "colour") == (
        "red: yes, large circle top left. green: no. blue: yes, small circle bottom right, large ring center. "
        "yellow: no. purple: no. white: no."
    )
    with pytest.raises(ValueError, match="inventory key"):
        W.inventory(scene, "size")


def test_caption_rows_mix_both_inventory_keys(scenes):
    rows = W.caption_rows(scenes[:100], seed=0, render_images=False)
    firsts = Counter(r["messages"][1]["content"][0]["text"].split(":")[0] for r in rows)
    assert set(firsts) == {"circle", "red"} and min(firsts.values()) > 30
    assert all("images" not in r for r in rows)


def test_question_weights_shift_the_mix(scenes):
    def share(weights):
        rows = W.qa_rows(scenes, seed=0, weights=weights, caption_fraction=0.0, render_images=False)
        questions = [m["content"][-1]["text"] for r in rows for m in r["messages"] if m["role"] == "user"]
        return sum(q.startswith("Is there") for q in questions) / len(questions)

    assert share({"existence": 3.0}) > 1.8 * share(None)


@pytest.mark.parametrize("every_turn", [False, True])
def test_short_answer_instruction_placement(scenes, every_turn):
    rows = W.qa_rows(
        scenes[:60], seed=0, caption_fraction=0.0, suffix_every_turn=every_turn, render_images=False
    )
    chats = [[m["content"][-1]["text"] for m in r["messages"] if m["role"] == "user"] for r in rows]
    assert sum(len(questions) > 1 for questions in chats) > len(chats) / 2
    for questions in chats:
        assert questions[0].endswith(W.SHORT_ANSWER)
        assert all(q.endswith(W.SHORT_ANSWER) == every_turn for q in questions[1:])
        assert all(q.count("?") == 1 for q in questions)


def _objects_named(scene, text):
    return [o for o in scene.objects if f"{o.colour} {o.shape}" in text]


def _check(scene, qtype, question, answer):
    """Answer each question from the scene by separate reasoning."""
    if qtype == "colour":
        shape = re.search(r"What colour is the (\w+)", question).group(1)
        (obj,) = [o for o in scene.objects if o.shape == shape]
        assert answer == obj.colour
    elif qtype == "shape":
        colour = re.search(r"the (\w+) object", question).group(1)
        (obj,) = [o for o in scene.objects if o.colour == colour]
        assert answer == obj.shape
    elif qtype == "count":
        if "How many shapes" in question:
            assert answer == str(len(scene.objects))
        else:
            plural = re.search(r"How many (\w+)", question).group(1)
            assert answer == str(sum(W.PLURALS[o.shape] == plural for o in scene.objects))
    elif qtype == "position":
        (obj,) = _objects_named(scene, question)
        row, col = divmod(obj.cell, 3)
        assert answer == (
            "center"
            if obj.cell == 4
            else f"{['top', 'middle', 'bottom'][row]} {['left', 'middle', 'right'][col]}"
        )
    elif qtype == "relation":
        m = re.match(r"Is the (\w+ \w+) (left of|right of|above|below) the (\w+ \w+)\?", question)
        a = next(o for o in scene.objects if f"{o.colour} {o.shape}" == m.group(1))
        b = next(o for o in scene.objects if f"{o.colour} {o.shape}" == m.group(3))
        (ra, ca), (rb, cb) = divmod(a.cell, 3), divmod(b.cell, 3)
        relation = m.group(2)
        holds = {"left of": ca < cb, "right of": ca > cb, "above": ra < rb, "below": ra > rb}[relation]
        # The relation, each object's column (left / right of) or row (above / below), then the yes / no.
        wa, wb = (("left", "middle", "right")[c] for c in (ca, cb))
        if relation in ("above", "below"):
            wa, wb = (("top", "middle", "bottom")[r] for r in (ra, rb))
        verdict = "yes" if holds else "no"
        assert answer == f"{relation}: {a.colour} {a.shape} {wa}, {b.colour} {b.shape} {wb}: {verdict}"
        assert W.verdict(answer) == verdict
    elif qtype == "existence":
        words = re.match(r"Is there a (.+) in the image\?", question).group(1).split()
        if len(words) == 2:
            present = any((o.colour, o.shape) == tuple(words) for o in scene.objects)
        else:
            present = any(o.shape == words[0] for o in scene.objects)
        assert answer == ("yes" if present else "no")
    else:
        raise AssertionError(qtype)


def test_questions_are_answered_correctly(scenes):
    rng = random.Random(0)
    seen = Counter()
    for scene in scenes:
        for qtype, question, answer in W.sample_questions(scene, rng, 4):
            _check(scene, qtype, question, answer)
            seen[qtype] += 1
    assert set(seen) == set(W.QUESTION_TYPES)


def test_relations_answered_in_one_word_without_explain():
    scene = W.Scene((W.Obj("circle", "red", "small", 0), W.Obj("square", "blue", "large", 8)), seed=0)
    for explain in (True, False):
        relations = W.candidate_questions(scene, random.Random(0), explain_relations=explain)["relation"]
        assert sorted(W.verdict(a) for _, a in relations) == ["no", "yes"]
        assert all((a in ("yes", "no")) != explain for _, a in relations)


def test_verdict_reads_the_closing_yes_or_no():
    assert W.verdict("left of: red circle left, blue square right: yes") == "yes"
    assert W.verdict("No.") == "no"
    assert W.verdict("left of: red circle left, blue square") is None  # cut short: no verdict, not a guess
    assert W.verdict("") is None


def test_yes_no_questions_are_balanced(scenes):
    rng = random.Random(1)
    answers = {"relation": Counter(), "existence": Counter()}
    for scene in scenes:
        for qtype, _, answer in W.sample_questions(scene, rng, 6):
            if qtype in answers:
                answers[qtype][W.verdict(answer)] += 1
    for qtype, counts in answers.items():
        assert 0.4 < counts["yes"] / sum(counts.values()) < 0.6, (qtype, counts)


def test_colour_bound_negatives_include_binding_traps(scenes):
    # "Is there a red circle?" when a red shape and a circle exist, but not together: the hard negatives.
    rng = random.Random(2)
    traps = 0
    for scene in scenes:
        for question, answer in W.candidate_questions(scene, rng)["existence"]:
            words = re.match(r"Is there a (.+) in the image\?", question).group(1).split()
            if answer == "no" and len(words) == 2:
                colour, shape = words
                traps += colour in scene.colours() and shape in scene.shapes()
    assert traps > 50


def test_pope_probes_follow_the_three_samplers(scenes):
    frequency, cooccurrence = W.shape_statistics(scenes)
    items = W.pope_items(scenes[:100], scenes, seed=0)
    assert {i["split"] for i in items} == set(W.POPE_SPLITS)
    for split in W.POPE_SPLITS:
        by_scene = {}
        for item in (i for i in items if i["split"] == split):
            by_scene.setdefault(item["scene"], []).append(item)
        for index, probes in by_scene.items():
            scene = scenes[index]
            present = set(scene.shapes())
            labels = Counter(p["label"] for p in probes)
            assert labels["yes"] == labels["no"]  # balanced per image, as POPE samples
            for p in probes:
                assert p["question"] == f"Is there a {p['object']} in the image?"
                assert (p["object"] in present) == (p["label"] == "yes")
            negatives = {p["object"] for p in probes if p["label"] == "no"}
            absent = [s for s in W.SHAPES if s not in present]
            if split == "popular":
                # No absent shape left out is more frequent than one chosen.
                left = [s for s in absent if s not in negatives]
                assert all(frequency[n] >= frequency[s] for n in negatives for s in left)
            if split == "adversarial":
                score = {a: sum(cooccurrence[s][a] for s in present) for a in absent}
                left = [s for s in absent if s not in negatives]
                assert all(score[n] >= score[s] for n in negatives for s in left)


def test_tokenizer_covers_the_world_and_keeps_special_tokens_whole(scenes, tmp_path):
    tok = W.build_tokenizer()
    rows = W.qa_rows(scenes[:100], seed=0) + W.caption_rows(scenes[:20], seed=0)
    texts = [p["text"] for r in rows for m in r["messages"] for p in m["content"] if p["type"] == "text"]
    for text in texts:
        ids = tok(text, add_special_tokens=False).input_ids
        assert tok.unk_token_id not in ids, text
        assert tok.decode(ids) == text.replace("\n", " ")  # one token per word: the text comes back
    ids = tok(
        "<|im_start|>user\n<image><image>\nWhat colour is the ring?<|im_end|>", add_special_tokens=False
    ).input_ids
    assert ids[:4] == [tok.convert_tokens_to_ids(t) for t in ("<|im_start|>", "user", "<image>", "<image>")]
    assert ids[-1] == tok.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.image_token == "<image>" and len(tok) < 120

    from transformers import AutoTokenizer

    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again("Where is the red ring?").input_ids == tok("Where is the red ring?").input_ids
    assert again.image_token == "<image>"


def _verdict_batch(tokenizer, rng: random.Random, n: int):
    """`n` written-out relation answers, padded; labels on the closing yes / no only."""
    import torch

    ids = []
    for _ in range(n):
        a, b = (
            W.Obj(rng.choice(W.SHAPES), rng.choice(list(W.COLOURS)), "small", c)
            for c in rng.sample(range(9), 2)
        )
        relation = rng.choice(list(W.RELATIONS))
        answer = W.relation_answer(a, b, relation, "yes" if W._relation_holds(a, b, relation) else "no")
        ids.append(tokenizer(answer)["input_ids"])
    length = max(map(len, ids))
    inputs = torch.full((n, length), tokenizer.pad_token_id)
    labels = torch.full((n, length), -100)
    for i, row in enumerate(ids):
        inputs[i, : len(row)] = torch.tensor(row)
        labels[i, len(row) - 1] = row[-1]
    return inputs, labels


def test_the_demo_llm_learns_the_written_out_verdict_alone():
    """The last step of a written-out relation answer, comparing two words under a relation, is within the
    demo LLM's reach: trained on it alone, it gets it right within a few hundred steps. (Inside the demo's
    mix it is one token of each relation answer, which is why relations are asked twice as often.)"""
    import torch
    from transformers import AutoModelForCausalLM

    from trainers.demo import DemoSettings
    from trainers.demo.pipeline import text_config

    tokenizer, rng = W.build_tokenizer(), random.Random(0)
    torch.manual_seed(0)
    config = text_config(DemoSettings(), tokenizer)
    model = AutoModelForCausalLM.from_config(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    for _ in range(300):
        inputs, labels = _verdict_batch(tokenizer, rng, 32)
        model(input_ids=inputs, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    inputs, labels = _verdict_batch(tokenizer, rng, 400)
    with torch.no_grad():
        logits = model(input_ids=inputs).logits
    rows, cols = (labels != -100).nonzero(as_tuple=True)
    accuracy = (logits[rows, cols - 1].argmax(-1) == labels[rows, cols]).float().mean().item()
    assert accuracy >= 0.95
