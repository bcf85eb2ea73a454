import pytest
import torch
from conftest import VOCAB, text_config, vision_config
from transformers import AutoModel, AutoModelForCausalLM, CLIPConfig, CLIPModel, SiglipConfig, SiglipModel

from modeling_tinylmm import TinyLMMForConditionalGeneration


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("parts")
    torch.manual_seed(0)
    AutoModel.from_config(vision_config("siglip")).save_pretrained(root / "siglip_vision")
    tiny_text = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
    CLIPModel(
        CLIPConfig(vision_config=vision_config("clip").to_dict(), text_config=tiny_text)
    ).save_pretrained(root / "clip_dual")
    SiglipModel(
        SiglipConfig(vision_config=vision_config("siglip").to_dict(), text_config=tiny_text)
    ).save_pretrained(root / "siglip_dual")
    AutoModelForCausalLM.from_config(text_config("qwen2")).save_pretrained(root / "qwen2")
    AutoModelForCausalLM.from_config(text_config("gpt2")).save_pretrained(root / "gpt2")
    return root


def _assert_prefix_equal(composed: dict, source: dict, prefix: str = ""):
    """Every composed weight equals the source weight of the same name."""
    for name, weight in composed.items():
        assert torch.equal(weight, source[prefix + name]), name


@pytest.mark.parametrize(
    ("vision", "source_prefix"),
    [("siglip_vision", ""), ("clip_dual", "vision_model."), ("siglip_dual", "vision_model.")],
)
def test_parts_arrive_unchanged(parts, vision, source_prefix):
    model = TinyLMMForConditionalGeneration.from_components(
        parts / vision, parts / "qwen2", connector_type="mlp2x_gelu"
    )
    vision_source = AutoModel.from_pretrained(parts / vision).state_dict()
    text_source = AutoModelForCausalLM.from_pretrained(parts / "qwen2").state_dict()
    _assert_prefix_equal(model.model.vision_tower.state_dict(), vision_source, source_prefix)
    body = {k: v for k, v in model.model.language_model.state_dict().items() if "embed_tokens" not in k}
    _assert_prefix_equal(body, text_source, "model.")
    # One new row for the image token; the old rows unchanged.
    assert model.config.image_token_id == VOCAB
    assert model.config.text_config.vocab_size == VOCAB + 1
    embed = model.get_input_embeddings().weight
    assert torch.equal(embed[:VOCAB], text_source["model.embed_tokens.weight"])
    assert torch.equal(model.lm_head.weight[:VOCAB], text_source["lm_head.weight"])
    assert model.config.vision_config.model_type.endswith("vision_model")


def test_given_image_token_keeps_the_vocabulary(parts):
    model = TinyLMMForConditionalGeneration.from_components(
        parts / "siglip_vision", parts / "gpt2", connector_type="pixel_shuffle", image_token_id=VOCAB - 1
    )
    assert model.config.text_config.vocab_size == VOCAB
    assert model.config.connector_type == "pixel_shuffle" and model.config.image_seq_length == 4
    assert model.lm_head.weight is model.get_input_embeddings().weight  # GPT-2 ties them
    source = AutoModelForCausalLM.from_pretrained(parts / "gpt2").state_dict()
    assert torch.equal(model.get_input_embeddings().weight, source["transformer.wte.weight"])


def test_composed_model_saves_and_reloads(parts, tmp_path):
    model = TinyLMMForConditionalGeneration.from_components(
        parts / "clip_dual", parts / "qwen2", vision_feature_layer=-1, connector_type="linear"
    )
    model.save_pretrained(tmp_path)
    reloaded = TinyLMMForConditionalGeneration.from_pretrained(tmp_path)
    for (name, a), b in zip(model.state_dict().items(), reloaded.state_dict().values()):
        assert torch.equal(a, b), name
