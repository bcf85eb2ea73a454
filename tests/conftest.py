"""Shared test helpers: tiny random-weight configs, no network."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import AutoConfig  # noqa: E402

torch.set_num_threads(1)  # tiny models: threads cost more than they give

VOCAB = 96
IMAGE_TOKEN = VOCAB - 1

# Tiny vision backbones: 32 px images, 8 px patches -> a 4x4 grid (ConvNeXt: stride 4 stem, 8 px at stage 2).
VISION = {
    "clip": dict(
        model_type="clip_vision_model",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
    ),
    "siglip": dict(
        model_type="siglip_vision_model",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
    ),
    "dinov2": dict(
        model_type="dinov2",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
        mlp_ratio=2,
    ),
    "convnext": dict(
        model_type="convnext",
        hidden_sizes=[8, 16, 24, 32],
        depths=[1, 1, 1, 1],
        num_channels=3,
        image_size=64,
        patch_size=4,
    ),
}

_LLM_COMMON = dict(
    vocab_size=VOCAB,
    bos_token_id=1,
    eos_token_id=2,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    max_position_embeddings=256,
)
TEXT = {
    "llama": dict(model_type="llama", num_attention_heads=4, num_key_value_heads=2, **_LLM_COMMON),
    "qwen2": dict(model_type="qwen2", num_attention_heads=4, num_key_value_heads=2, **_LLM_COMMON),
    "qwen3": dict(
        model_type="qwen3", num_attention_heads=4, num_key_value_heads=2, head_dim=8, **_LLM_COMMON
    ),
    "phi": dict(model_type="phi", num_attention_heads=4, **_LLM_COMMON),
    "phi3": dict(
        model_type="phi3", num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, **_LLM_COMMON
    ),
    "stablelm": dict(model_type="stablelm", num_attention_heads=4, num_key_value_heads=2, **_LLM_COMMON),
    "gemma": dict(
        model_type="gemma", num_attention_heads=4, num_key_value_heads=2, head_dim=8, **_LLM_COMMON
    ),
    "gpt2": dict(
        model_type="gpt2",
        vocab_size=VOCAB,
        bos_token_id=1,
        eos_token_id=2,
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=256,
    ),
}


def vision_config(name: str = "clip", **overrides):
    kwargs = {**VISION[name], **overrides}
    return AutoConfig.for_model(kwargs.pop("model_type"), **kwargs)


def text_config(name: str = "llama", **overrides):
    kwargs = {**TEXT[name], **overrides}
    return AutoConfig.for_model(kwargs.pop("model_type"), **kwargs)


def tiny_config(vision: str = "clip", text: str = "llama", connector: str = "mlp2x_gelu", **kwargs):
    from modeling_tinylmm import TinyLMMConfig

    return TinyLMMConfig(
        vision_config=vision_config(vision).to_dict(),
        text_config=text_config(text).to_dict(),
        connector_type=connector,
        image_token_id=IMAGE_TOKEN,
        **kwargs,
    )


def tiny_model(
    vision: str = "clip", text: str = "llama", connector: str = "mlp2x_gelu", seed: int = 0, **kwargs
):
    from modeling_tinylmm import TinyLMMForConditionalGeneration

    torch.manual_seed(seed)
    return TinyLMMForConditionalGeneration(tiny_config(vision, text, connector, **kwargs)).eval()


def image_prompt(config, n_images: int = 1, prefix=(1, 5, 6), suffix=(7, 8)) -> torch.Tensor:
    """input_ids (1, L) with `n_images` pre-expanded image placeholders between some text tokens."""
    ids = list(prefix)
    for _ in range(n_images):
        ids += [config.image_token_id] * config.image_seq_length + [9]
    return torch.tensor([ids + list(suffix)])


def pixels(config, n: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    side = config.vision_config.image_size
    return torch.randn(n, 3, side, side, generator=g)


@pytest.fixture
def model():
    return tiny_model()
