"""Chat templates: each family's format, assistant masks after placeholder expansion, TRL's collator."""

import pytest
import torch
from _processor_fixtures import make_processor, make_tokenizer, rgb
from conftest import IMAGE_TOKEN
from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

from processors import CHAT_TEMPLATES, guess_template_name, resolve_chat_template, template_for

FAMILIES = ["chatml", "llama3", "phi3", "gemma", "vicuna"]
END = {
    "chatml": "<|im_end|>",
    "llama3": "<|eot_id|>",
    "phi3": "<|end|>",
    "gemma": "<end_of_turn>",
    "vicuna": "</s>",
    "plain": "</s>",
}
SHORT = [
    {"role": "system", "content": "You are brief."},
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is this ?"}]},
    {"role": "assistant", "content": "a red circle ."},
]
# The formats of the families (test tokenizer: bos <s>, eos </s>).
RENDERED = {
    "chatml": "<|im_start|>system\nYou are brief.<|im_end|>\n<|im_start|>user\n<image>\nwhat is this ?<|im_end|>\n"
    "<|im_start|>assistant\na red circle .<|im_end|>\n",
    "llama3": "<s><|start_header_id|>system<|end_header_id|>\n\nYou are brief.<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\n<image>\nwhat is this ?<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\na red circle .<|eot_id|>",
    "phi3": "<|system|>\nYou are brief.<|end|>\n<|user|>\n<image>\nwhat is this ?<|end|>\n<|assistant|>\na red circle .<|end|>\n",
    "gemma": "<s><start_of_turn>user\nYou are brief.\n\n<image>\nwhat is this ?<end_of_turn>\n"
    "<start_of_turn>model\na red circle .<end_of_turn>\n",
    "vicuna": "You are brief. USER: <image>\nwhat is this ? ASSISTANT: a red circle .</s>",
    "plain": "<image>a red circle .</s>",
}
GENERATION_PROMPT = {
    "chatml": "<|im_start|>assistant\n",
    "llama3": "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "phi3": "<|assistant|>\n",
    "gemma": "<start_of_turn>model\n",
    "vicuna": "ASSISTANT:",
}
# Three turns, an image in two of them: the masks must move past both expansions.
LONG = [
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is in this image ?"}]},
    {"role": "assistant", "content": "a red circle ."},
    {"role": "user", "content": [{"type": "text", "text": "and this ?"}, {"type": "image"}]},
    {"role": "assistant", "content": [{"type": "text", "text": "a blue square"}]},
    {"role": "user", "content": "how many shapes ?"},
    {"role": "assistant", "content": "two"},
]
ANSWERS = [["a", "red", "circle", "."], ["a", "blue", "square"], ["two"]]


def masked_runs(processor, input_ids, mask):
    """The masked tokens, one list per contiguous run."""
    runs, current = [], []
    for token, m in zip(processor.tokenizer.convert_ids_to_tokens(input_ids), mask):
        if m:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    return runs + ([current] if current else [])


@pytest.mark.parametrize("family", FAMILIES + ["plain"])
def test_family_format(family):
    processor = make_processor(family if family != "plain" else "vicuna", chat_template=family)
    assert processor.apply_chat_template(SHORT) == RENDERED[family]
    assert "{% generation %}" in processor.chat_template
    if family in GENERATION_PROMPT:
        prompt = processor.apply_chat_template(SHORT[:2], add_generation_prompt=True)
        assert prompt.endswith(GENERATION_PROMPT[family])


@pytest.mark.parametrize("family", FAMILIES)
def test_template_is_guessed_from_the_tokenizer(family):
    assert guess_template_name(make_tokenizer(family)) == family
    assert make_processor(family).chat_template == template_for(family)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mode", ["pad", "anyres"])
def test_assistant_masks_after_expansion(family, mode):
    processor = make_processor(family, image_aspect_ratio=mode, image_grid_pinpoints=[[32, 64]])
    out = processor.apply_chat_template(
        LONG,
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
        images=[rgb(40, 30), rgb(30, 40)],
        return_tensors="pt",
    )
    ids, mask = out["input_ids"][0], out["assistant_masks"][0]
    tokens_per_image = 17 if mode == "anyres" else 16  # two images in one sample: padded, newline in anyres
    assert int((ids == IMAGE_TOKEN).sum()) == 2 * tokens_per_image
    assert masked_runs(processor, ids.tolist(), mask.tolist()) == [a + [END[family]] for a in ANSWERS]
    assert not mask[ids == IMAGE_TOKEN].any()
    # the same ids as rendering first and processing the text
    text = processor.apply_chat_template(LONG)
    again = processor(
        text=text,
        images=[rgb(40, 30), rgb(30, 40)],
        return_tensors="pt",
        add_special_tokens=not text.startswith("<s>"),
    )
    assert torch.equal(again["input_ids"], out["input_ids"])


def test_plain_supervises_the_caption_only():
    processor = make_processor("chatml", chat_template="plain")
    conv = [
        {"role": "user", "content": "<image>\ndescribe the image ."},
        {"role": "assistant", "content": "a red circle"},
    ]
    assert processor.apply_chat_template(conv) == "<image>a red circle</s>"
    out = processor.apply_chat_template(
        conv, tokenize=True, return_dict=True, return_assistant_tokens_mask=True, images=[rgb(9, 9)]
    )
    assert masked_runs(processor, out["input_ids"][0], out["assistant_masks"][0]) == [
        ["a", "red", "circle", "</s>"]
    ]
    assert out["input_ids"][0][:16] == [IMAGE_TOKEN] * 16


def chat(question, answer, image=None, embed=False):
    parts = [{"type": "text", "text": question}]
    if image is not None:
        parts.insert(0, {"type": "image", "image": image} if embed else {"type": "image"})
    return [{"role": "user", "content": parts}, {"role": "assistant", "content": answer}]


def test_images_in_parts_and_batches():
    processor = make_processor()
    a, b = rgb(20, 30, seed=1), rgb(30, 20, seed=2)
    with_parts = [
        chat("what ?", "a circle", a, True),
        chat("yes or no ?", "no"),
        chat("and ?", "a square", b, True),
    ]
    bare = [chat("what ?", "a circle", a), chat("yes or no ?", "no"), chat("and ?", "a square", b)]
    kwargs = dict(
        tokenize=True, return_dict=True, return_assistant_tokens_mask=True, padding=True, return_tensors="pt"
    )
    embedded = processor.apply_chat_template(with_parts, **kwargs)
    given = processor.apply_chat_template(bare, images=[[a], [], [b]], **kwargs)
    for key in ("input_ids", "attention_mask", "assistant_masks", "pixel_values", "image_layout"):
        assert torch.equal(embedded[key], given[key]), key
    # padding is never an assistant token
    assert not embedded["assistant_masks"][embedded["attention_mask"] == 0].any()
    runs = [
        masked_runs(processor, i.tolist(), m.tolist())
        for i, m in zip(embedded["input_ids"], embedded["assistant_masks"])
    ]
    assert runs == [[["a", "circle", "<|im_end|>"]], [["no", "<|im_end|>"]], [["a", "square", "<|im_end|>"]]]
    with pytest.raises(ValueError, match="both inside the messages' parts and as images="):
        processor.apply_chat_template(with_parts, images=[[a], [], [b]], **kwargs)


def test_trl_collator_masks_everything_but_the_answers():
    """TRL's own assistant_only_loss path, through the processor's template."""
    processor = make_processor()
    collator = DataCollatorForVisionLanguageModeling(processor=processor, assistant_only_loss=True)
    examples = [
        {
            "messages": [
                {"role": "user", "content": "what is this ?"},
                {"role": "assistant", "content": "a circle"},
            ],
            "images": [rgb(20, 20)],
        },
        {
            "messages": [
                {"role": "user", "content": "how many ?"},
                {"role": "assistant", "content": "two"},
                {"role": "user", "content": "and now ?"},
                {"role": "assistant", "content": "three"},
            ],
            "images": [rgb(10, 30)],
        },
    ]
    batch = collator(examples)
    assert batch["image_layout"].shape == (2, 14) and batch["pixel_values"].shape == (2, 3, 32, 32)
    supervised = [processor.tokenizer.convert_ids_to_tokens(row[row != -100]) for row in batch["labels"]]
    assert supervised == [["a", "circle", "<|im_end|>"], ["two", "<|im_end|>", "three", "<|im_end|>"]]


@pytest.mark.parametrize("family", FAMILIES)
def test_templates_work_through_the_tokenizer(family):
    """The same template on the tokenizer alone (a text-only LLM run) gives the same masks."""
    processor = make_processor(family)
    text_only = [LONG[4], LONG[5]]
    out = processor.tokenizer.apply_chat_template(
        text_only,
        chat_template=processor.chat_template,
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
    )
    assert masked_runs(processor, out["input_ids"], out["assistant_masks"]) == [["two", END[family]]]


def test_template_lookup_errors():
    with pytest.raises(ValueError, match="unknown chat template 'nope'"):
        template_for("nope")
    with pytest.raises(ValueError, match="neither a known name"):
        resolve_chat_template("nope", make_tokenizer())
    jinja = "{{ messages[0].content }}"
    assert resolve_chat_template(jinja, make_tokenizer()) == jinja
    assert set(CHAT_TEMPLATES) == {"chatml", "llama3", "phi3", "gemma", "vicuna", "plain"}
