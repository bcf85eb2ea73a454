"""Multimodal packing: samples with their images packed into rows keep their logits, their loss and their
gradients; chats tokenised ahead batch exactly as the full way; training with packing matches training
without it (gradient accumulation, LoRA, modality-length grouping, resume)."""

import pytest
import torch
from _processor_fixtures import make_processor, rgb
from _train_fixtures import (
    caption_rows,
    chat_rows,
    cpu_config,
    one_thread,  # noqa: F401  (autouse fixture)
    write_images,
    write_json,
)
from conftest import tiny_model
from datasets import Dataset, Features, Image, List, Value
from transformers import TrainerCallback

from trainers.arguments import RecipeArguments
from trainers.collator import ENCODED_COLUMNS, IGNORE_INDEX, TOKENS_KEY, TinyLMMCollator, pack_rows
from trainers.data import load_training_data
from trainers.loss import add_supervised_loss
from trainers.trainer import TinyLMMTrainer

SFT = RecipeArguments(recipe="test", stage="sft", train_modules=["connector", "language_model"])
# The proofs run on the CPU everywhere and on CUDA where a GPU is present (fp32, TF32 off).
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")),
]


@pytest.fixture
def exact_fp32():
    """fp32 as fp32 on CUDA: no TF32 in matrix products or convolutions."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _chat(*turns, images: int = 0) -> list[dict]:
    messages = []
    for t, (question, answer) in enumerate(turns):
        content = ([{"type": "image"}] * images if t == 0 else []) + [{"type": "text", "text": question}]
        messages += [
            {"role": "user", "content": content},
            {"role": "assistant", "content": [{"type": "text", "text": answer}]},
        ]
    return messages


def _rows() -> list[dict]:
    """Images of several sizes (AnyRes gives each its own token count), two images in one sample, a video,
    text-only samples, one to three turns."""
    video = {
        "messages": [
            {
                "role": "user",
                "content": [{"type": "video"}, {"type": "text", "text": "what is in the video ?"}],
            },
            {"role": "assistant", "content": [{"type": "text", "text": "a red circle"}]},
        ],
        "images": [],
        "videos": [[rgb(32, 32, seed=6), rgb(32, 32, seed=7)]],
    }
    rows = [
        {"messages": _chat(("what is in this image ?", "a red circle ."), ("how many ?", "two"), images=1),
         "images": [rgb(40, 30, seed=1)]},
        {"messages": _chat(("how many shapes are there ?", "three")), "images": []},
        {"messages": _chat(("describe the image .", "a blue square ."), images=1), "images": [rgb(70, 20, seed=2)]},
        {"messages": _chat(("what color is it ?", "red and blue"), images=2),
         "images": [rgb(20, 20, seed=3), rgb(30, 50, seed=4)]},
        {"messages": _chat(("what is this ?", "a circle"), ("what color ?", "green"), ("is it left ?", "yes"), images=1),
         "images": [rgb(25, 60, seed=5)]},
        video,
        {"messages": _chat(("is there a circle ?", "yes"), ("what color ?", "red")), "images": []},
    ]  # fmt: skip
    return [{**row, "sample_index": i} for i, row in enumerate(rows)]


def _encoded(collator, rows):
    return [{**row, **collator.encode(row)} for row in rows]


def _spans(batch) -> list[tuple[int, int, int]]:
    """(row, start, end) of every sample in a packed batch, from its restarting position ids."""
    spans = []
    for r, positions in enumerate(batch["position_ids"]):
        starts = (positions == 0).nonzero().flatten().tolist() + [len(positions)]
        spans += [(r, s, e) for s, e in zip(starts, starts[1:])]
    return spans


def _inputs(batch, device: str = "cpu") -> dict:
    keys = ("input_ids", "attention_mask", "position_ids", "pixel_values", "image_layout")
    return {k: batch[k].to(device) if torch.is_tensor(batch[k]) else batch[k] for k in keys if k in batch}


def test_best_fit_decreasing_rows():
    # 5 opens a row (3 free); 4 does not fit there; the first 3 goes to the fullest row it fits in (the 5's).
    assert pack_rows([5, 4, 3, 3, 2], capacity=8) == [[0, 2], [1, 3], [4]]
    assert pack_rows([9, 2], capacity=8) == [[0], [1]]  # longer than a row: a row of its own
    assert pack_rows([3, 3, 3], capacity=9) == [[0, 1, 2]]


@pytest.mark.parametrize("template", ["chatml", "plain", "llama3", "vicuna", "phi3", "gemma"])
def test_chats_tokenised_ahead_batch_exactly_as_the_full_way(template):
    family = {"plain": "vicuna"}.get(template, template)
    model = tiny_model(image_aspect_ratio="anyres_max_2")
    processor = make_processor(family, chat_template=template, config=model.config)
    rows = _rows()
    for max_length in (None, 60):  # 60: some samples are shortened or dropped, by the full way
        collator = TinyLMMCollator(processor, max_length=max_length)
        full, ahead = collator(rows), collator(_encoded(collator, rows))
        assert full.keys() == ahead.keys()
        for key, value in full.items():
            if torch.is_tensor(value):
                assert torch.equal(value, ahead[key]), (template, max_length, key)
            else:
                assert value == ahead[key], (template, max_length, key)


def test_encoding_a_dataset_adds_its_columns_and_batches_the_same():
    """A dataset with decoded images: the map reads only the text columns; the rows still hold the images."""
    model = tiny_model(image_aspect_ratio="anyres_max_2")
    collator = TinyLMMCollator(make_processor("chatml", config=model.config))
    part = {"type": Value("string"), "text": Value("string")}
    features = Features(
        {"messages": List({"role": Value("string"), "content": List(part)}), "images": List(Image())}
    )
    rows = [r for r in _rows() if not r.get("videos")]
    for row in rows:
        for message in row["messages"]:
            for p in message["content"]:
                p.setdefault("text", None)
    dataset = Dataset.from_list(
        [{"messages": r["messages"], "images": r["images"]} for r in rows], features=features
    )
    encoded = collator.encode_dataset(dataset)
    assert encoded.column_names == [*dataset.column_names, *ENCODED_COLUMNS]
    assert collator.encode_dataset(encoded) is encoded  # already encoded: left as it is
    full, ahead = collator(list(dataset)), collator(list(encoded))
    for key, value in full.items():
        assert torch.equal(value, ahead[key]) if torch.is_tensor(value) else value == ahead[key], key


def _model_and_collators(text: str, attn: str, device: str = "cpu"):
    model = tiny_model(text=text, image_aspect_ratio="anyres_max_2").float().to(device)
    model.set_attn_implementation(attn)
    processor = make_processor("chatml", config=model.config)
    return model, TinyLMMCollator(processor), TinyLMMCollator(processor, max_length=130, packing=True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("text", ["llama", "qwen2", "gpt2"])
def test_each_packed_sample_has_the_logits_it_has_alone(text, attn, device, exact_fp32):
    model, plain, packing = _model_and_collators(text, attn, device)
    rows = _encoded(plain, _rows())
    packed = packing(rows)
    assert "attention_mask" not in packed and packed["input_ids"].shape[0] < len(rows)  # rows shared
    spans = _spans(packed)
    with torch.no_grad():
        logits = model(**_inputs(packed, device)).logits
        for row in rows:
            alone = plain([row])
            reference = model(**_inputs(alone, device)).logits[0]
            ids = alone["input_ids"][0]
            matches = [
                (r, s, e)
                for r, s, e in spans
                if e - s == len(ids) and torch.equal(packed["input_ids"][r, s:e], ids)
            ]
            assert len(matches) == 1, row["sample_index"]
            r, s, e = matches[0]
            torch.testing.assert_close(logits[r, s:e], reference, atol=1e-5, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("text", ["llama", "gpt2"])
def test_packed_loss_and_gradients_equal_the_unpacked_ones(text, device, exact_fp32):
    model, plain, packing = _model_and_collators(text, "sdpa", device)
    rows = _encoded(plain, _rows())
    padded, packed = plain(rows), packing(rows)
    supervised = int((padded["labels"][:, 1:] != IGNORE_INDEX).sum())
    assert int((packed["labels"][:, 1:] != IGNORE_INDEX).sum()) == supervised
    assert packed[TOKENS_KEY] == padded[TOKENS_KEY] == int(padded["attention_mask"].sum())

    def loss_and_grads(batch, supervised_only: bool):
        model.zero_grad()
        if supervised_only:
            out = model(**_inputs(batch, device), labels=batch["labels"].to(device), supervised_loss=True)
            loss = out.loss / out.num_tokens
        else:  # the model's own loss on full logits: the mean over supervised tokens
            loss = model(**_inputs(batch, device), labels=batch["labels"].to(device)).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    reference, reference_grads = loss_and_grads(padded, supervised_only=False)
    add_supervised_loss(model)
    for batch in (padded, packed):
        loss, grads = loss_and_grads(batch, supervised_only=True)
        torch.testing.assert_close(loss, reference, atol=1e-6, rtol=1e-6)
        assert grads.keys() == reference_grads.keys()
        for name, grad in grads.items():
            torch.testing.assert_close(grad, reference_grads[name], atol=1e-6, rtol=1e-5, msg=name)


# -- training -----------------------------------------------------------------------------------------


def _dataset(tmp_path):
    names = write_images(tmp_path / "images", 6, size=(40, 30))
    text_only = {"conversations": [{"from": "human", "value": "how many ?"}, {"from": "gpt", "value": "two"}]}
    rows = chat_rows(names[:3], turns=3) + caption_rows(names[3:]) + [text_only] * 2
    dataset, _ = load_training_data(
        write_json(tmp_path / "d.json", rows), image_folder=str(tmp_path / "images")
    )
    return dataset


def _train(tmp_path, name, dataset, packing, recipe=SFT, resume=None, callbacks=(), **overrides):
    model = tiny_model(image_aspect_ratio="anyres_max_2", seed=0).train()
    processor = make_processor("chatml", config=model.config)
    options = dict(
        max_steps=4, optim="sgd", learning_rate=0.5, warmup_steps=0, max_length=128, packing=packing
    )
    args = cpu_config(tmp_path / name, **{**options, **overrides})
    trainer = TinyLMMTrainer(
        model,
        args=args,
        train_dataset=dataset,
        processing_class=processor,
        recipe=recipe,
        group_by_modality_length=True,
        callbacks=list(callbacks),
    )
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def _weights(trainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}


def _assert_same_weights(a, b):
    assert a.keys() == b.keys() and a
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=2e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize(
    "recipe",
    [
        SFT,
        RecipeArguments(
            recipe="test",
            stage="lora",
            train_modules=["connector"],
            use_lora=True,
            lora_r=4,
            lora_dropout=0.0,
        ),
    ],
    ids=["full", "lora"],
)
def test_packed_training_takes_the_steps_of_unpacked_training(tmp_path, recipe):
    """Gradient accumulation (2 x 3 samples per step), modality-length grouping, LoRA: SGD on packed batches
    ends where SGD on padded batches does (no dropout: its masks depend on the batch's layout)."""
    dataset = _dataset(tmp_path)
    common = dict(per_device_train_batch_size=3, gradient_accumulation_steps=2, recipe=recipe)
    padded = _train(tmp_path, "padded", dataset, packing=False, **common)
    packed = _train(tmp_path, "packed", dataset, packing=True, **common)
    start = dict(tiny_model(image_aspect_ratio="anyres_max_2", seed=0).named_parameters())
    moved = [n for n, w in _weights(packed).items() if n in start and not torch.equal(w, start[n])]
    assert moved or recipe.use_lora
    _assert_same_weights(_weights(padded), _weights(packed))
    logged = [h for h in packed.state.log_history if "loss" in h]
    assert all(0 < h["packing_efficiency"] <= 1 for h in logged)
    assert all("packing_efficiency" not in h for h in padded.state.log_history)
    padded_losses = [h["loss"] for h in padded.state.log_history if "loss" in h]
    assert [h["loss"] for h in logged] == pytest.approx(padded_losses, rel=1e-5)
    assert packed.args.packing is True


class _StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def test_packed_training_resumes_with_the_same_data_order(tmp_path):
    dataset = _dataset(tmp_path)
    options = dict(save_strategy="steps", save_steps=2, per_device_train_batch_size=2)
    straight = _train(tmp_path, "straight", dataset, packing=True, **options)
    _train(tmp_path, "interrupted", dataset, packing=True, callbacks=[_StopAt(2)], **options)
    resumed = _train(
        tmp_path,
        "resumed",
        dataset,
        packing=True,
        resume=str(tmp_path / "interrupted" / "checkpoint-2"),
        **options,
    )
    _assert_same_weights(_weights(straight), _weights(resumed))
    losses = [h["loss"] for h in straight.state.log_history if "loss" in h]
    # The resumed run's history holds the checkpoint's first two steps, then its own: the same batches.
    assert [h["loss"] for h in resumed.state.log_history if "loss" in h] == pytest.approx(losses, rel=1e-6)


def test_packing_refuses_what_it_cannot_do(tmp_path):
    dataset = _dataset(tmp_path)
    with pytest.raises(ValueError, match="packed whole"):
        _train(tmp_path, "wrapped", dataset, packing=True, packing_strategy="wrapped")
    with pytest.raises(ValueError, match="set packing: true"):
        _train(tmp_path, "padding_free", dataset, packing=False, padding_free=True)
