"""What vLLM's transformers backend (vllm/model_executor/models/transformers/, vLLM 0.33) asks of a model and its
processor, checked on the CPU: vLLM itself needs a GPU. Every connector and image mode: the processor's token
and crop counts from an image's size alone equal what it writes and what the model makes."""

import json

import pytest
import torch
from _processor_fixtures import make_processor, rgb
from conftest import tiny_model
from transformers.modeling_outputs import BaseModelOutputWithPooling

from modeling_tinylmm import TinyLMMModel

CASES = [
    ("clip", "mlp2x_gelu", "pad", {}),
    ("clip", "mlp2x_gelu", "crop", {}),
    ("siglip", "linear", "resize", {}),
    (
        "siglip",
        "mlp2x_gelu",
        "anyres_max_2",
        {"image_grid_pinpoints": [[32, 32], [32, 64], [64, 32], [64, 64], [64, 96]]},
    ),
    (
        "clip",
        "resampler",
        "pad",
        {"connector_config": {"num_queries": 5, "num_layers": 1, "head_dim": 8, "num_heads": 2}},
    ),
    (
        "clip",
        "qformer",
        "resize",
        {"connector_config": {"num_queries": 6, "num_layers": 1, "hidden_size": 16, "num_heads": 2}},
    ),
    ("clip", "dense_sti", "pad", {}),
    ("clip", "pixel_shuffle", "anyres", {"image_grid_pinpoints": [[32, 32], [32, 64], [64, 64]]}),
    ("convnext", "convnext_stage", "pad", {"connector_config": {"depth": 1}}),
]
SIZES = [(29, 45), (50, 90), (64, 20), (32, 32)]  # (height, width)


@pytest.mark.parametrize(("vision", "connector", "mode", "extra"), CASES)
def test_counts_from_sizes_match_the_processor_and_the_model(vision, connector, mode, extra):
    model = tiny_model(vision, "llama", connector, image_aspect_ratio=mode, **extra)
    processor = make_processor(config=model.config)
    counts = processor._get_num_multimodal_tokens(image_sizes=SIZES)
    for (h, w), tokens, patches in zip(SIZES, counts["num_image_tokens"], counts["num_image_patches"]):
        inputs = processor(images=[rgb(w, h)], text="<image> what", return_tensors="pt")
        assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == tokens
        assert inputs["pixel_values"].shape[0] == patches
        out = model.get_image_features(inputs["pixel_values"], inputs["image_layout"], return_dict=True)
        assert isinstance(out, BaseModelOutputWithPooling)
        assert [f.shape[0] for f in out.pooler_output] == [tokens]


def test_offsets_and_token_types():
    model = tiny_model(image_aspect_ratio="pad")
    processor = make_processor(config=model.config)
    text = ["a <image> b <image>", "<image> c"]
    out = processor(
        images=[[rgb(40, 30), rgb(20, 30)], [rgb(30, 30)]],
        text=text,
        return_text_replacement_offsets=True,
        return_mm_token_type_ids=True,
        padding=True,
        return_tensors="pt",
    )
    offsets = out["text_replacement_offsets"]
    assert [len(o) for o in offsets] == [2, 1]
    first = offsets[0][0]
    assert first["type"] == "image" and first["text"] == "<image>" and first["span"] == (2, 9)
    assert first["replacement"] == "<image>" * model.config.image_seq_length
    assert first["new_span"] == (2, 2 + len(first["replacement"]))
    types = out["mm_token_type_ids"]
    assert torch.equal(types == 1, out["input_ids"] == model.config.image_token_id)


def test_model_side_of_the_contract(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModel"] == "modeling_tinylmm.TinyLMMModel"  # what the backend instantiates
    assert TinyLMMModel._supports_attention_backend
    assert model.model.language_model is not None
    processor = make_processor(config=model.config)
    assert processor.image_token == "<image>" and processor.image_token_id == model.config.image_token_id
    # The backend merges image embeddings itself and runs the base model on inputs_embeds, passing its own
    # attention arguments down to the LLM.
    inputs = processor(images=[rgb(40, 30)], text="<image> what", return_tensors="pt")
    with torch.no_grad():
        full = model.model(**inputs).last_hidden_state
        embeds = model.model.get_input_embeddings()(inputs["input_ids"])
        features = model.model.get_image_features(
            inputs["pixel_values"], inputs["image_layout"], return_dict=True
        )
        mask = (inputs["input_ids"] == model.config.image_token_id)[..., None]
        embeds = embeds.masked_scatter(mask, torch.cat(features.pooler_output))
        seen = {}

        def spy(module, args, kwargs):
            seen.update(kwargs)

        handle = model.model.language_model.register_forward_pre_hook(spy, with_kwargs=True)
        split = model.model(inputs_embeds=embeds, attention_mask=inputs["attention_mask"], marker=1)
        handle.remove()
    assert seen.get("marker") == 1
    assert torch.allclose(split.last_hidden_state, full, atol=1e-6)
