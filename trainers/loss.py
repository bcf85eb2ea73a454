"""The training loss on supervised positions only.

A causal LM's loss needs the logits of the positions whose next token is supervised: an alignment batch
supervises a caption of a few dozen tokens after hundreds of image tokens, an SFT batch its answers. Only
those hidden states go through the LM head and the cross-entropy, in chunks, so no `[tokens x vocabulary]`
logits tensor is ever held:

- a plain `nn.Linear` head: `ChunkedLinearCrossEntropy`, which keeps one chunk of logits at a time and
  recomputes it in the backward pass (the per-token log-sum-exp is all it saves);
- on CUDA with `liger-kernel` installed: Liger's fused linear cross-entropy;
- any other head (LoRA-wrapped, quantised): the head module itself, chunk by chunk under activation
  checkpointing.

`add_supervised_loss(model)` gives a model a `supervised_loss=True` mode of its forward (the original forward
is unchanged otherwise), so the loss runs inside the model's own forward call, where DDP, FSDP and
DeepSpeed expect every use of the weights to happen.
"""

from __future__ import annotations

import functools
import importlib.metadata
import types
from dataclasses import dataclass

import torch
from packaging.version import Version
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers.utils import ModelOutput

IGNORE_INDEX = -100
# Logits held at once, in elements: 2**25 fp32 values are 128 MiB (220 tokens of a 151,936-word vocabulary).
CHUNK_ELEMENTS = 2**25


@dataclass
class SupervisedLossOutput(ModelOutput):
    """What `model(..., labels=labels, supervised_loss=True)` returns.

    Args:
        loss: the cross-entropy summed over the supervised tokens (divide by their count, or by TRL's
            `num_items_in_batch`, for the mean).
        num_tokens: how many tokens are supervised (next-token labels other than -100).
        entropy: the summed entropy of the next-token distributions at those tokens (no gradient), or None
            where the kernel does not give it.
        num_correct: how many of them the model ranks first (no gradient), or None likewise.
    """

    loss: torch.Tensor | None = None
    num_tokens: torch.Tensor | None = None
    entropy: torch.Tensor | None = None
    num_correct: torch.Tensor | None = None


def chunk_size(vocab_size: int, elements: int | None = None) -> int:
    """Tokens per chunk so that one chunk's logits hold about `elements` (default CHUNK_ELEMENTS) values."""
    return max(1, (elements or CHUNK_ELEMENTS) // max(1, vocab_size))


def _logits(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    logits = hidden @ weight.to(hidden.dtype).T
    if bias is not None:
        logits = logits + bias.to(logits.dtype)
    return logits.to(torch.promote_types(logits.dtype, torch.float32))  # softmax in fp32 at least


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Sum over tokens of cross-entropy(hidden @ weight.T + bias, targets), chunk by chunk.

    Forward returns (loss sum, entropy sum, number of top-1 hits); the last two carry no gradient. Only the
    log-sum-exp of each token is saved; the backward pass recomputes each chunk's logits once and gives the
    gradients of the hidden states, the weight and the bias (each only when it is needed).
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk: int, with_metrics: bool):
        n = hidden.shape[0]
        dtype = torch.promote_types(hidden.dtype, torch.float32)
        lse = torch.empty(n, dtype=dtype, device=hidden.device)
        loss = torch.zeros((), dtype=dtype, device=hidden.device)
        entropy = torch.zeros((), dtype=dtype, device=hidden.device)
        correct = torch.zeros((), dtype=torch.long, device=hidden.device)
        for start in range(0, n, chunk):
            end = min(start + chunk, n)
            logits = _logits(hidden[start:end], weight, bias)
            target = targets[start:end]
            lse[start:end] = chunk_lse = torch.logsumexp(logits, dim=-1)
            loss += (chunk_lse - logits.gather(1, target[:, None]).squeeze(1)).sum()
            if with_metrics:
                probs = torch.exp(logits - chunk_lse[:, None])
                entropy += (chunk_lse - (probs * logits).sum(-1)).sum()
                correct += (logits.argmax(-1) == target).sum()
        ctx.save_for_backward(hidden, weight, bias, targets, lse)
        ctx.chunk = chunk
        ctx.mark_non_differentiable(entropy, correct)
        return loss, entropy, correct

    @staticmethod
    def backward(ctx, grad_loss, _grad_entropy, _grad_correct):
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        dtype = lse.dtype
        grad_weight = torch.zeros(weight.shape, dtype=dtype, device=weight.device) if need_weight else None
        grad_bias = torch.zeros(bias.shape, dtype=dtype, device=bias.device) if need_bias else None
        n = hidden.shape[0]
        for start in range(0, n, ctx.chunk):
            end = min(start + ctx.chunk, n)
            # d(lse - logit_target)/d logits = softmax - one_hot(target)
            grad = torch.exp(_logits(hidden[start:end], weight, bias) - lse[start:end, None])
            grad[torch.arange(end - start, device=grad.device), targets[start:end]] -= 1.0
            grad *= grad_loss
            if need_hidden:
                grad_hidden[start:end] = grad.to(weight.dtype) @ weight
            if need_weight:
                grad_weight += (grad.T.to(hidden.dtype) @ hidden[start:end]).to(dtype)
            if need_bias:
                grad_bias += grad.sum(0)
        if need_weight:
            grad_weight = grad_weight.to(weight.dtype)
        if need_bias:
            grad_bias = grad_bias.to(bias.dtype)
        return grad_hidden, grad_weight, grad_bias, None, None, None


def _full_weight(tensor: torch.Tensor | None) -> torch.Tensor | None:
    """A parameter that FSDP2 left sharded (a DTensor) gathered whole; anything else as it is."""
    full = getattr(tensor, "full_tensor", None)
    return full() if callable(full) else tensor


# Liger releases before this one ignore `reduction` (they always average); the sum is needed here.
LIGER_MIN_VERSION = "0.5.0"


def _liger_loss():
    """Liger's fused linear cross-entropy module class, or None when liger-kernel is not installed (or too
    old to sum over tokens)."""
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
    except ImportError:
        return None
    if Version(importlib.metadata.version("liger-kernel")) < Version(LIGER_MIN_VERSION):
        return None
    return LigerFusedLinearCrossEntropyLoss


def _module_chunk(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor):
    logits = head(hidden)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    loss = nn.functional.cross_entropy(logits, targets, reduction="sum")
    with torch.no_grad():
        lse = torch.logsumexp(logits, dim=-1)
        entropy = (lse - (torch.softmax(logits, -1) * logits).sum(-1)).sum()
        correct = (logits.argmax(-1) == targets).sum()
    return loss, entropy, correct


def linear_cross_entropy(
    hidden: torch.Tensor, head: nn.Module, targets: torch.Tensor, chunk: int | None = None
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(loss sum, entropy sum, top-1 hits) of `head` on `hidden` (tokens, D) against `targets` (tokens,).

    The metrics carry no gradient and are None where Liger computes the loss (it does not give them).
    """
    plain = type(head) is nn.Linear  # not LoRA-wrapped, not a quantised subclass
    vocab = head.out_features if plain else getattr(head, "out_features", 0) or 32768
    chunk = chunk or chunk_size(vocab)
    if plain:
        weight, bias = _full_weight(head.weight), _full_weight(head.bias)
        liger = _liger_loss() if hidden.is_cuda else None
        if liger is not None:
            out = liger(reduction="sum")(weight, hidden.to(weight.dtype).contiguous(), targets, bias)
            loss = out[0] if isinstance(out, tuple) else getattr(out, "loss", out)
            return loss.float(), None, None
        return ChunkedLinearCrossEntropy.apply(hidden, weight, bias, targets, chunk, True)
    dtype = torch.promote_types(hidden.dtype, torch.float32)
    totals = [hidden.new_zeros((), dtype=dtype) for _ in range(2)] + [targets.new_zeros(())]
    for start in range(0, hidden.shape[0], chunk):
        part = slice(start, start + chunk)
        # Activation checkpointing keeps no chunk's logits for the backward pass: they are recomputed there.
        outs = checkpoint(_module_chunk, head, hidden[part], targets[part], use_reentrant=False)
        totals = [t + o for t, o in zip(totals, outs)]
    loss, entropy, correct = totals
    return loss, entropy.detach(), correct


def supervised_token_loss(
    model: nn.Module, hidden_states: torch.Tensor, labels: torch.Tensor
) -> SupervisedLossOutput:
    """The loss of a causal LM on the tokens `labels` supervise: position t predicts label t + 1."""
    targets = labels[:, 1:].to(hidden_states.device)
    mask = targets != IGNORE_INDEX
    head = model.get_output_embeddings()
    hidden = hidden_states[:, :-1][mask]
    loss, entropy, correct = linear_cross_entropy(hidden, head, targets[mask])
    return SupervisedLossOutput(loss=loss, num_tokens=mask.sum(), entropy=entropy, num_correct=correct)


def add_supervised_loss(model: nn.Module) -> None:
    """Give `model` (a causal LM or TinyLMM model) a supervised-loss mode:
    `model(..., labels=labels, supervised_loss=True)` runs the backbone and returns a `SupervisedLossOutput`
    computed on the supervised positions only. Without the flag the forward is the one the model had
    (generation and evaluation are unchanged). Add it after wrapping with PEFT: patch the base model."""
    original = model.forward

    @functools.wraps(type(model).forward)  # the signature `generate` checks its keyword arguments against
    def forward(self, *args, supervised_loss: bool = False, labels=None, **kwargs):
        if not supervised_loss:
            if labels is not None:
                kwargs["labels"] = labels
            return original(*args, **kwargs)
        if labels is None:
            raise ValueError("supervised_loss=True needs labels.")
        kwargs["use_cache"] = False
        backbone = getattr(self, self.base_model_prefix)
        outputs = backbone(*args, **kwargs)
        return supervised_token_loss(self, outputs.last_hidden_state, labels)

    model.forward = types.MethodType(forward, model)


__all__ = [
    "ChunkedLinearCrossEntropy",
    "SupervisedLossOutput",
    "add_supervised_loss",
    "linear_cross_entropy",
    "supervised_token_loss",
]
