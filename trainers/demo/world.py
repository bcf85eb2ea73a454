"""A synthetic world of simple scenes for the embedded demo: images, captions, Q&A and POPE probes.

Every scene is a 3x3 grid of cells holding 1-4 shapes (a shape, a colour, a size, a cell). Everything is
generated from a seed, so a run is reproducible. The train / held-out split is by scene layout: a layout
lands on one side only, chosen by a stable hash of its content.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import Counter
from dataclasses import dataclass
from itertools import combinations

from PIL import Image, ImageDraw

from processors.chat_templates import END_OF_TURN, IMAGE_TOKEN

from ..evaluation.benchmarks import SHORT_ANSWER

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring")
PLURALS = {s: s + ("es" if s.endswith("s") else "s") for s in SHAPES}
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 100, 240),
    "yellow": (235, 215, 40),
    "purple": (160, 60, 210),
    "white": (240, 240, 240),
}
SIZES = {"small": 0.55, "large": 0.9}  # fraction of a cell
ROWS, COLS = ("top", "middle", "bottom"), ("left", "middle", "right")
# Shape frequencies are skewed and some shapes come in pairs, as objects do in real photos; POPE's
# popular and adversarial negatives exploit exactly these priors.
SHAPE_WEIGHTS = {"circle": 3.0, "square": 2.5, "triangle": 2.0, "diamond": 1.5, "cross": 1.0, "ring": 1.0}
PARTNERS = {"circle": "ring", "ring": "circle", "square": "diamond", "diamond": "square"}
PARTNERS |= {"triangle": "cross", "cross": "triangle"}
PARTNER_PROB = 0.4
BACKGROUND = (20, 20, 20)

DESCRIBE_BY = {"shape": "List the shapes by kind.", "colour": "List the shapes by colour."}
QUESTION_TYPES = ("colour", "shape", "count", "position", "relation", "existence")
RELATIONS = {"left of": (0, -1), "right of": (0, 1), "above": (-1, 0), "below": (1, 0)}
NUMBERS = ("0", "1", "2", "3", "4")

SPECIAL_TOKENS = {
    "pad_token": "<pad>",
    "unk_token": "<unk>",
    "bos_token": "<s>",
    "eos_token": END_OF_TURN["chatml"],
}
CHAT_TOKENS = ("<|im_start|>", END_OF_TURN["chatml"])

# Every sentence the world speaks; `vocabulary()` reads its words from here.
TEMPLATES = (
    "There is {n} shape, There are {n} shapes, a {size} {colour} {shape} at the {position}.",
    "What colour is the {shape}?",
    "What shape is the {colour} object?",
    "How many shapes are there?",
    "How many {shapes} are there?",
    "Where is the {colour} {shape}?",
    "Is the {colour} {shape} {relation} the {colour} {shape}?",
    "{relation}: {colour} {shape} {position}, {colour} {shape} {position}: yes",
    "Is there a {colour} {shape} in the image?",
    "Is there a {shape} in the image?",
    "yes no center",
    "{shape}: yes, {size} {colour} {position}, no.",
    "system user assistant You are a helpful assistant.",
    SHORT_ANSWER,
    *DESCRIBE_BY.values(),
    "Answer with the option's letter from the given choices directly.",
    "A B C D E",
)


def position_name(cell: int) -> str:
    row, col = divmod(cell, 3)
    return "center" if (row, col) == (1, 1) else f"{ROWS[row]} {COLS[col]}"


@dataclass(frozen=True)
class Obj:
    shape: str
    colour: str
    size: str
    cell: int

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]  # sorted by cell
    seed: int  # drives the rendering jitter only

    @property
    def key(self) -> str:
        return ";".join(f"{o.cell}:{o.size}:{o.colour}:{o.shape}" for o in self.objects)

    @property
    def held_out(self) -> bool:
        """One in ten layouts is held out, by a hash of the layout (stable across runs and machines)."""
        return int(hashlib.md5(self.key.encode()).hexdigest(), 16) % 10 == 0

    def shapes(self) -> Counter:
        return Counter(o.shape for o in self.objects)

    def colours(self) -> Counter:
        return Counter(o.colour for o in self.objects)


def sample_scene(rng: random.Random, min_objects: int = 1, max_objects: int = 4) -> Scene:
    n = rng.randint(min_objects, max_objects)
    cells = rng.sample(range(9), n)
    objects: list[Obj] = []
    shapes, weights = list(SHAPE_WEIGHTS), list(SHAPE_WEIGHTS.values())
    for cell in cells:
        while True:  # (colour, shape) pairs are unique in a scene so that every object can be named
            if objects and rng.random() < PARTNER_PROB:
                shape = PARTNERS[rng.choice(objects).shape]
            else:
                shape = rng.choices(shapes, weights)[0]
            colour = rng.choice(list(COLOURS))
            if all((o.shape, o.colour) != (shape, colour) for o in objects):
                break
        objects.append(Obj(shape, colour, rng.choice(list(SIZES)), cell))
    return Scene(tuple(sorted(objects, key=lambda o: o.cell)), rng.getrandbits(32))


def generate_scenes(n: int, seed: int, held_out: bool, **kwargs) -> list[Scene]:
    """`n` scenes from one side of the split."""
    rng = random.Random(f"scenes-{seed}-{held_out}")
    scenes = []
    while len(scenes) < n:
        scene = sample_scene(rng, **kwargs)
        if scene.held_out == held_out:
            scenes.append(scene)
    return scenes


# Rendering -------------------------------------------------------------------------------------------


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "triangle":
        return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
    if shape == "cross":
        t = r / 2.6
        pts = [(t, r), (t, t), (r, t), (r, -t), (t, -t), (t, -r)]
        pts += [(-x, -y) for x, y in pts]
        return [(cx + x, cy + y) for x, y in pts]
    raise ValueError(shape)


def render(scene: Scene, image_size: int = 48, supersample: int = 4) -> Image.Image:
    """Draw a scene: each object in its cell, with a little jitter of position, size and colour."""
    rng = random.Random(scene.seed)
    big = image_size * supersample
    cell = big / 3
    img = Image.new("RGB", (big, big), BACKGROUND)
    draw = ImageDraw.Draw(img)
    for o in scene.objects:
        row, col = divmod(o.cell, 3)
        r = cell * SIZES[o.size] / 2 * rng.uniform(0.9, 1.05)
        slack = cell / 2 - r
        cx = (col + 0.5) * cell + rng.uniform(-slack, slack) * 0.6
        cy = (row + 0.5) * cell + rng.uniform(-slack, slack) * 0.6
        fill = tuple(max(0, min(255, c + rng.randint(-18, 18))) for c in COLOURS[o.colour])
        box = (cx - r, cy - r, cx + r, cy + r)
        if o.shape == "circle":
            draw.ellipse(box, fill=fill)
        elif o.shape == "ring":
            draw.ellipse(box, outline=fill, width=max(1, round(r * 0.35)))
        elif o.shape == "square":
            s = r * 0.85
            draw.rectangle((cx - s, cy - s, cx + s, cy + s), fill=fill)
        else:
            draw.polygon(_polygon(o.shape, cx, cy, r), fill=fill)
    return img.resize((image_size, image_size), Image.Resampling.BOX)


# Language --------------------------------------------------------------------------------------------


def caption(scene: Scene) -> str:
    parts = [f"a {o.size} {o.colour} {o.shape} at the {position_name(o.cell)}" for o in scene.objects]
    n = len(scene.objects)
    head = "There is 1 shape" if n == 1 else f"There are {n} shapes"
    return f"{head}, " + ", ".join(parts) + "."


def inventory(scene: Scene, key: str = "shape") -> str:
    """A dense caption: every shape kind (or every colour) in a fixed order, whether it is there, and its
    objects.

    "circle: yes, large red top left. square: no. ..." Each fact is written right after the word it is
    looked up by, and every kind is named, present or not, so that one caption trains, on every object
    at once, the lookups that questions need: whether a kind is there (the POPE question, answered with
    the same "yes" / "no" tokens), the colour of a shape or the shape of a colour, where an object is.
    """
    if key not in ("shape", "colour"):
        raise ValueError(f"inventory key must be 'shape' or 'colour', got {key!r}")
    parts = []
    for kind in SHAPES if key == "shape" else COLOURS:
        objs = [o for o in scene.objects if (o.shape if key == "shape" else o.colour) == kind]
        objs.sort(key=lambda o: (list(COLOURS).index(o.colour), SHAPES.index(o.shape)))
        other = (lambda o: o.colour) if key == "shape" else (lambda o: o.shape)
        body = ", ".join(f"{o.size} {other(o)} {position_name(o.cell)}" for o in objs)
        parts.append(f"{kind}: yes, {body}." if objs else f"{kind}: no.")
    return " ".join(parts)


def _relation_holds(a: Obj, b: Obj, relation: str) -> bool:
    (ra, ca), (rb, cb) = divmod(a.cell, 3), divmod(b.cell, 3)
    dr, dc = RELATIONS[relation]
    return (ra - rb) * dr > 0 if dr else (ca - cb) * dc > 0


def relation_answer(a: Obj, b: Obj, relation: str, verdict: str, explain: bool = True) -> str:
    """The answer to "Is a <relation> b?": with `explain`, the relation, the column (left of / right of) or
    the row (above / below) of each object, then the yes / no ("left of: red circle left, blue square
    middle: yes").

    Answered with one word, the question asks a two-block LLM to find two objects, read both cells and compare
    them inside a single token's forward pass, and it stays at chance. Written out, each token of the answer
    is one step the model already takes elsewhere: copy words from the question, look up where one object is,
    and last compare two words and a relation that stand at the same distances back in every answer."""
    if not explain:
        return verdict
    (ra, ca), (rb, cb) = divmod(a.cell, 3), divmod(b.cell, 3)
    wa, wb = (COLS[ca], COLS[cb]) if RELATIONS[relation][1] else (ROWS[ra], ROWS[rb])
    return f"{relation}: {a.name} {wa}, {b.name} {wb}: {verdict}"


def verdict(answer: str) -> str | None:
    """The yes / no that ends an answer ("...: yes" -> "yes"), or None when it ends otherwise."""
    words = re.findall(r"[a-z]+", answer.lower())
    return words[-1] if words and words[-1] in ("yes", "no") else None


def candidate_questions(
    scene: Scene, rng: random.Random, explain_relations: bool = True
) -> dict[str, list[tuple[str, str]]]:
    """Every kind of question the scene can answer unambiguously: {type: [(question, answer), ...]}.

    Yes/no types hold one "yes" and one "no" candidate where both exist, so that sampling a type then a
    candidate is balanced. Relation answers are written out (`relation_answer`).
    """
    shapes, colours = scene.shapes(), scene.colours()
    present = {(o.shape, o.colour) for o in scene.objects}
    out: dict[str, list[tuple[str, str]]] = {}
    out["colour"] = [
        (f"What colour is the {o.shape}?", o.colour) for o in scene.objects if shapes[o.shape] == 1
    ]
    out["shape"] = [
        (f"What shape is the {o.colour} object?", o.shape) for o in scene.objects if colours[o.colour] == 1
    ]
    shape = rng.choice(SHAPES)
    out["count"] = [
        ("How many shapes are there?", str(len(scene.objects))),
        (f"How many {PLURALS[shape]} are there?", str(shapes[shape])),
    ]
    out["position"] = [(f"Where is the {o.name}?", position_name(o.cell)) for o in scene.objects]

    relation: list[tuple[str, str]] = []
    pairs = [p for pair in combinations(scene.objects, 2) for p in (pair, pair[::-1])]
    if pairs:
        a, b = rng.choice(pairs)
        true = [r for r in RELATIONS if _relation_holds(a, b, r)]
        false = [r for r in RELATIONS if not _relation_holds(a, b, r)]
        for rels, answer in ((true, "yes"), (false, "no")):
            if rels:
                name = rng.choice(rels)
                question = f"Is the {a.name} {name} the {b.name}?"
                relation.append((question, relation_answer(a, b, name, answer, explain_relations)))
    out["relation"] = relation

    # Existence, bound to a colour: the hard negatives pair a present colour with a present shape.
    o = rng.choice(scene.objects)
    existence = [(f"Is there a {o.name} in the image?", "yes")]
    bound = [(s, c) for s in shapes for c in colours if (s, c) not in present]
    absent = [(s, c) for s in SHAPES for c in COLOURS if (s, c) not in present]
    s, c = rng.choice(bound) if bound and rng.random() < 0.5 else rng.choice(absent)
    existence.append((f"Is there a {c} {s} in the image?", "no"))
    # Existence of a kind of shape, as POPE asks it; negatives drawn uniformly from the absent kinds.
    kinds_absent = [s for s in SHAPES if s not in shapes]
    existence.append((f"Is there a {rng.choice(list(shapes))} in the image?", "yes"))
    if kinds_absent:
        existence.append((f"Is there a {rng.choice(kinds_absent)} in the image?", "no"))
    out["existence"] = existence
    return {k: v for k, v in out.items() if v}


def sample_questions(
    scene: Scene,
    rng: random.Random,
    k: int,
    weights: dict[str, float] | None = None,
    explain_relations: bool = True,
) -> list[tuple[str, str, str]]:
    """Up to `k` (type, question, answer) triples about a scene, no repeats; types drawn with `weights`
    (uniformly by default)."""
    candidates = candidate_questions(scene, rng, explain_relations)
    types = list(candidates)
    type_weights = [(weights or {}).get(t, 1.0) for t in types]
    picked: list[tuple[str, str, str]] = []
    seen = set()
    for _ in range(4 * k):
        if len(picked) == k:
            break
        qtype = rng.choices(types, type_weights)[0]
        question, answer = rng.choice(candidates[qtype])
        if question not in seen:
            seen.add(question)
            picked.append((qtype, question, answer))
    return picked


# POPE ------------------------------------------------------------------------------------------------

POPE_SPLITS = ("random", "popular", "adversarial")


def shape_statistics(scenes: list[Scene]) -> tuple[Counter, dict[str, Counter]]:
    """How often each shape appears (in how many scenes), and with which other shapes."""
    frequency: Counter = Counter()
    cooccurrence: dict[str, Counter] = {s: Counter() for s in SHAPES}
    for scene in scenes:
        kinds = set(scene.shapes())
        frequency.update(kinds)
        for a in kinds:
            cooccurrence[a].update(kinds - {a})
    return frequency, cooccurrence


def pope_questions(
    scene: Scene, split: str, rng: random.Random, frequency: Counter, cooccurrence: dict[str, Counter]
) -> list[tuple[str, str, str]]:
    """POPE probes for one scene: (shape, question, label), as many "no" as "yes" where possible.

    As in POPE: positives are the shapes present; negatives are absent shapes drawn at random
    (`random`), the most frequent ones (`popular`), or the ones that co-occur most with the present
    shapes (`adversarial`).
    """
    present = sorted(scene.shapes())
    absent = [s for s in SHAPES if s not in present]
    k = min(len(present), len(absent))
    positives = rng.sample(present, k)
    if split == "random":
        negatives = rng.sample(absent, k)
    elif split == "popular":
        negatives = sorted(absent, key=lambda s: (-frequency[s], s))[:k]
    elif split == "adversarial":
        score = Counter()
        for s in present:
            score.update({a: cooccurrence[s][a] for a in absent})
        negatives = sorted(absent, key=lambda s: (-score[s], s))[:k]
    else:
        raise ValueError(f"unknown POPE split {split!r}; expected one of {POPE_SPLITS}")
    probes = [(s, "yes") for s in positives] + [(s, "no") for s in negatives]
    return [(s, f"Is there a {s} in the image?", label) for s, label in probes]


# Datasets --------------------------------------------------------------------------------------------


def user_turn(text: str, with_image: bool) -> dict:
    content = [{"type": "image"}] if with_image else []
    return {"role": "user", "content": content + [{"type": "text", "text": text}]}


def assistant_turn(text: str) -> dict:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def describe(scene: Scene, rng: random.Random) -> tuple[str, str]:
    """A description request and its answer: the scene's inventory keyed by shape or by colour."""
    key = rng.choice(("shape", "colour"))
    return DESCRIBE_BY[key], inventory(scene, key)


def caption_rows(
    scenes: list[Scene], seed: int, image_size: int = 48, render_images: bool = True
) -> list[dict]:
    """Alignment rows: the image, then its inventory (for the `plain` template, which shows the image and
    the caption only). Without `render_images` the rows carry no images (the caller stores them, one per
    scene, in order)."""
    rng = random.Random(f"captions-{seed}")
    rows = []
    for scene in scenes:
        prompt, text = describe(scene, rng)
        row = {"messages": [user_turn(prompt, True), assistant_turn(text)]}
        if render_images:
            row["images"] = [render(scene, image_size)]
        rows.append(row)
    return rows


def qa_rows(
    scenes: list[Scene],
    seed: int,
    image_size: int = 48,
    turns: tuple[int, int] = (2, 4),
    caption_fraction: float = 0.2,
    weights: dict[str, float] | None = None,
    suffix_every_turn: bool = False,
    render_images: bool = True,
    explain_relations: bool = True,
) -> list[dict]:
    """Multi-turn SFT rows: short-answer questions about the scene (question types drawn with `weights`);
    a `caption_fraction` of the chats start with a description, so that alignment is not forgotten.

    The first question carries the short-answer instruction (LLaVA-1.5's VQA prompt); later ones only with
    `suffix_every_turn`: the instruction holds for the whole chat, and repeating it makes a chat a fifth
    longer."""
    rng = random.Random(f"qa-{seed}")
    rows = []
    for scene in scenes:
        messages: list[dict] = []
        if rng.random() < caption_fraction:
            prompt, text = describe(scene, rng)
            messages += [user_turn(prompt, True), assistant_turn(text)]
        for j, (_, question, answer) in enumerate(
            sample_questions(scene, rng, rng.randint(*turns), weights, explain_relations)
        ):
            text = f"{question}\n{SHORT_ANSWER}" if j == 0 or suffix_every_turn else question
            messages += [user_turn(text, not messages), assistant_turn(answer)]
        row = {"messages": messages}
        if render_images:
            row["images"] = [render(scene, image_size)]
        rows.append(row)
    return rows


def vqa_items(
    scenes: list[Scene], seed: int, per_scene: int = 1, explain_relations: bool = True
) -> list[dict]:
    """Held-out VQA items: {"scene", "type", "question", "answer"}, question types balanced per scene."""
    rng = random.Random(f"vqa-{seed}")
    items = []
    for i, scene in enumerate(scenes):
        candidates = candidate_questions(scene, rng, explain_relations)
        types = [QUESTION_TYPES[(i * per_scene + j) % len(QUESTION_TYPES)] for j in range(per_scene)]
        for qtype in types:
            qtype = qtype if qtype in candidates else rng.choice(list(candidates))
            question, answer = rng.choice(candidates[qtype])
            items.append({"scene": i, "type": qtype, "question": question, "answer": answer})
    return items


def pope_items(scenes: list[Scene], reference: list[Scene], seed: int) -> list[dict]:
    """Held-out POPE items for every split: {"scene", "split", "object", "question", "label"}.

    Frequencies and co-occurrences come from `reference` (the training scenes), as POPE takes them
    from the dataset's annotations.
    """
    frequency, cooccurrence = shape_statistics(reference)
    items = []
    for split in POPE_SPLITS:
        rng = random.Random(f"pope-{seed}-{split}")
        for i, scene in enumerate(scenes):
            for shape, question, label in pope_questions(scene, split, rng, frequency, cooccurrence):
                items.append(
                    {"scene": i, "split": split, "object": shape, "question": question, "label": label}
                )
    return items


# Tokenizer -------------------------------------------------------------------------------------------


def vocabulary() -> list[str]:
    """Every word and punctuation mark the world uses, in a fixed order."""
    from tokenizers.pre_tokenizers import Whitespace

    words = [*SHAPES, *PLURALS.values(), *COLOURS, *SIZES, *ROWS, *COLS, *RELATIONS, *NUMBERS, "shape"]
    for template in TEMPLATES:
        words += re.sub(r"\{\w+\}", " ", template).split()
    pre = Whitespace()
    out: list[str] = []
    for word in words:
        for piece, _ in pre.pre_tokenize_str(word):
            if piece not in out:
                out.append(piece)
    return out


def build_tokenizer(chat_template: str | None = None):
    """A word-level fast tokenizer for the world's language, with the chat and image tokens.

    A closed word-level vocabulary keeps sequences short: one token per word.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = [SPECIAL_TOKENS["pad_token"], SPECIAL_TOKENS["unk_token"], SPECIAL_TOKENS["bos_token"]]
    specials += [*CHAT_TOKENS, IMAGE_TOKEN]
    vocab = {tok: i for i, tok in enumerate(specials + vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=SPECIAL_TOKENS["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    # Words are joined with spaces, without one before punctuation ("circle ?" -> "circle?").
    tok.decoder = decoders.Sequence(
        [decoders.WordPiece(prefix="##", cleanup=True), decoders.Replace(" :", ":")]
    )
    tok.add_special_tokens(specials)  # matched whole, before the text is split into words
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        image_token=IMAGE_TOKEN,
        extra_special_tokens=list(CHAT_TOKENS),
        chat_template=chat_template,
        padding_side="left",
        **SPECIAL_TOKENS,
    )
    return tokenizer
