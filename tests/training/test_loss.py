"""The loss on supervised positions only (trainers/loss.py): the same loss, metrics and gradients as the full
logits give, for a plain, a tied and a LoRA-wrapped head, and from the trainer as from TRL's own loss; the
head only ever sees supervised positions, a chunk at a time."""

import pytest
import torch
from _processor_fixtures import make_processor, rgb
from _train_fixtures import cpu_config, one_thread  # noqa: F401  (autouse fixture)
from conftest import tiny_model
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from trl import SFTTrainer

from trainers import loss as loss_module
from trainers.arguments import RecipeArguments
from trainers.collator import IGNORE_INDEX, TinyLMMCollator
from trainers.loss import ChunkedLinearCrossEntropy, add_supervised_loss, linear_cross_entropy
from trainers.trainer import TinyLMMTrainer


def _full(hidden, weight, bias, targets):
    logits = hidden @ weight.T + (bias if bias is not None else 0)
    loss = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
    probs = logits.softmax(-1)
    entropy = -(probs * probs.log()).sum()
    correct = (logits.argmax(-1) == targets).sum()
    return loss, entropy, correct


def _leaves(seed, with_bias=True):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(13, 8, generator=g, dtype=torch.float64).requires_grad_()
    weight = torch.randn(29, 8, generator=g, dtype=torch.float64).requires_grad_()
    bias = torch.randn(29, generator=g, dtype=torch.float64).requires_grad_() if with_bias else None
    targets = torch.randint(0, 29, (13,), generator=g)
    return hidden, weight, bias, targets


@pytest.mark.parametrize("chunk", [1, 4, 13, 100])
@pytest.mark.parametrize("with_bias", [True, False])
def test_chunked_cross_entropy_equals_the_full_one(chunk, with_bias):
    hidden, weight, bias, targets = _leaves(0, with_bias)
    leaves = [t for t in (hidden, weight, bias) if t is not None]
    expected = _full(hidden, weight, bias, targets)
    expected_grads = torch.autograd.grad(expected[0] * 0.7, leaves)
    got = ChunkedLinearCrossEntropy.apply(hidden, weight, bias, targets, chunk, True)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a.double(), b.double())
    assert not got[1].requires_grad and not got[2].requires_grad
    for a, b in zip(torch.autograd.grad(got[0] * 0.7, leaves), expected_grads):
        torch.testing.assert_close(a, b)


def test_frozen_head_gets_no_gradient_and_the_hidden_states_do():
    hidden, weight, bias, targets = _leaves(1)
    weight.requires_grad_(False)
    bias.requires_grad_(False)
    loss, _, _ = ChunkedLinearCrossEntropy.apply(hidden, weight, bias, targets, 5, False)
    loss.backward()
    assert weight.grad is None and bias.grad is None
    expected = torch.autograd.grad(_full(hidden, weight, bias, targets)[0], hidden)[0]
    torch.testing.assert_close(hidden.grad, expected)


@pytest.mark.skipif(
    not torch.cuda.is_available() or loss_module._liger_loss() is None,
    reason="needs a CUDA GPU and liger-kernel",
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_liger_on_cuda_gives_the_loss_and_gradients_of_the_chunked_path(dtype):
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(300, 64, generator=g).to("cuda", dtype)
    head = torch.nn.Linear(64, 1000, bias=False).to("cuda", dtype)
    targets = torch.randint(0, 1000, (300,), generator=g).cuda()
    results = []
    for use_liger in (True, False):
        leaf = hidden.clone().requires_grad_()
        head.zero_grad()
        if use_liger:
            loss = linear_cross_entropy(leaf, head, targets)[0]
        else:
            loss = ChunkedLinearCrossEntropy.apply(leaf, head.weight, None, targets, 64, False)[0]
        loss.backward()
        results.append((loss.float(), leaf.grad.float(), head.weight.grad.float()))
    tolerance = {"atol": 1e-4, "rtol": 1e-4} if dtype == torch.float32 else {"atol": 2e-2, "rtol": 2e-2}
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, **tolerance)


def test_a_wrapped_head_is_called_chunk_by_chunk_with_the_same_result():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 29).double()
    wrapped = get_peft_model(
        torch.nn.Sequential(head), LoraConfig(r=2, target_modules=["0"], init_lora_weights=False)
    )
    layer = wrapped.base_model.model[0]
    assert type(layer) is not torch.nn.Linear
    hidden, _, _, targets = _leaves(2)
    expected = _full(hidden, *_effective_weight(layer), targets)
    params = [p for p in wrapped.parameters() if p.requires_grad]
    expected_grads = torch.autograd.grad(expected[0], [hidden, *params])
    got = linear_cross_entropy(hidden, layer, targets, chunk=4)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a.double(), b.double())
    for a, b in zip(torch.autograd.grad(got[0], [hidden, *params]), expected_grads):
        torch.testing.assert_close(a, b)


def _effective_weight(layer):
    delta = layer.lora_B["default"].weight @ layer.lora_A["default"].weight * layer.scaling["default"]
    return layer.base_layer.weight + delta, layer.base_layer.bias


# -- the model -------------------------------------------------------------------------------------------


def _batch(model):
    processor = make_processor("chatml", config=model.config)
    rows = [
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image"}, {"type": "text", "text": "what is in this image ?"}],
                },
                {"role": "assistant", "content": [{"type": "text", "text": answer}]},
            ],
            "images": [rgb(40, 30, seed=i)],
            "sample_index": i,
        }
        for i, answer in enumerate(["a red circle .", "two", "it is blue and there are three"])
    ]
    return TinyLMMCollator(processor)(rows)


def _inputs(batch):
    return {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values", "image_layout")}


def _loss_and_grads(model, batch, supervised: bool):
    model.zero_grad()
    if supervised:
        out = model(**_inputs(batch), labels=batch["labels"], supervised_loss=True)
        loss = out.loss / out.num_tokens
    else:
        loss = model(**_inputs(batch), labels=batch["labels"]).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("variant", ["plain", "tied", "lora"])
def test_supervised_positions_give_the_loss_and_gradients_of_the_full_logits(variant):
    model = tiny_model()
    if variant == "tied":  # one matrix read twice: by the embedding and by the head
        model.lm_head.weight = model.get_input_embeddings().weight
    if variant == "lora":
        targets = ["lm_head", "q_proj", "v_proj"]  # the head wrapped too: the module path
        model = get_peft_model(model, LoraConfig(r=2, target_modules=targets, init_lora_weights=False))
    model.train()
    batch = _batch(model)
    reference, reference_grads = _loss_and_grads(model, batch, supervised=False)
    base = model.get_base_model() if variant == "lora" else model
    add_supervised_loss(base)
    loss, grads = _loss_and_grads(model, batch, supervised=True)
    torch.testing.assert_close(loss, reference)
    assert grads.keys() == reference_grads.keys() and grads
    for name, grad in grads.items():
        torch.testing.assert_close(grad, reference_grads[name], atol=1e-6, rtol=1e-5, msg=name)
    if variant == "tied":
        assert base.lm_head.weight is base.get_input_embeddings().weight


def test_the_head_sees_only_supervised_positions_in_chunks(monkeypatch):
    model = tiny_model().train()
    add_supervised_loss(model)
    batch = _batch(model)
    supervised = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    assert supervised < batch["input_ids"].numel() // 4
    shapes = []
    original = loss_module._logits

    def record(hidden, weight, bias):
        shapes.append(tuple(hidden.shape))
        return original(hidden, weight, bias)

    monkeypatch.setattr(loss_module, "_logits", record)
    monkeypatch.setattr(loss_module, "CHUNK_ELEMENTS", 5 * model.config.text_config.vocab_size)
    out = model(**_inputs(batch), labels=batch["labels"], supervised_loss=True)
    assert int(out.num_tokens) == supervised
    assert sum(rows for rows, _ in shapes) == supervised and max(rows for rows, _ in shapes) <= 5
    shapes.clear()
    out.loss.backward()
    assert sum(rows for rows, _ in shapes) == supervised  # each chunk recomputed once, nothing else


# -- the trainer -----------------------------------------------------------------------------------------


def test_trainer_loss_and_metrics_equal_trls_own(tmp_path):
    model = tiny_model().train()
    processor = make_processor("chatml", config=model.config)
    trainer = TinyLMMTrainer(
        model,
        args=cpu_config(tmp_path / "out"),
        train_dataset=Dataset.from_list(
            [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yes"}]}]
        ),
        processing_class=processor,
        recipe=RecipeArguments(train_modules=["connector", "language_model"]),
    )
    batch = _batch(model)
    num_items = torch.tensor(int((batch["labels"][:, 1:] != IGNORE_INDEX).sum()) + 7)  # as under accumulation
    ours = trainer.compute_loss(trainer.model, dict(batch), num_items_in_batch=num_items)
    ours_metrics = {k: list(v) for k, v in trainer._metrics["train"].items()}
    trainer._metrics["train"].clear()
    inputs = {k: v for k, v in batch.items() if torch.is_tensor(v)}
    theirs = SFTTrainer.compute_loss(trainer, trainer.model, inputs, num_items_in_batch=num_items)
    torch.testing.assert_close(ours, theirs)
    for key in ("entropy", "mean_token_accuracy"):
        assert ours_metrics[key] == pytest.approx(trainer._metrics["train"][key], rel=1e-5), key
