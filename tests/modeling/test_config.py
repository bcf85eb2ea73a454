import json
import socket

import pytest
from conftest import IMAGE_TOKEN, text_config, tiny_config, tiny_model, vision_config
from transformers import AutoConfig, CLIPConfig

from modeling_tinylmm import CONNECTORS, TinyLMMConfig


def test_sub_configs_accept_instances_and_dicts_and_serialise_as_dicts(tmp_path):
    from_instances = TinyLMMConfig(vision_config=vision_config("siglip"), text_config=text_config("qwen2"))
    from_dicts = TinyLMMConfig(
        vision_config=vision_config("siglip").to_dict(), text_config=text_config("qwen2").to_dict()
    )
    assert from_instances.to_dict() == from_dicts.to_dict()
    from_dicts.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "tinylmm"
    assert (
        isinstance(saved["vision_config"], dict)
        and saved["vision_config"]["model_type"] == "siglip_vision_model"
    )
    assert isinstance(saved["text_config"], dict) and saved["text_config"]["model_type"] == "qwen2"
    reloaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(reloaded, TinyLMMConfig)
    assert {**reloaded.to_dict(), "_name_or_path": ""} == from_dicts.to_dict()


def test_llava_field_names_and_defaults():
    config = tiny_config()
    assert config.image_token_id == IMAGE_TOKEN
    assert config.vision_feature_layer == -2  # ViT default, as LLaVA
    assert config.vision_feature_select_strategy == "default"
    assert config.projector_hidden_act == "gelu"
    assert tiny_config("convnext").vision_feature_layer == -1  # a CNN's last stage
    assert tiny_config(vision_feature_layer=[-3, -2]).feature_width == 64


def test_unknown_connector_lists_registered_names():
    with pytest.raises(ValueError, match="unknown connector 'mlp2x_relu'") as err:
        tiny_config(connector="mlp2x_relu")
    for name in ("identity", "resampler", "dense_dci", "convnext_stage"):
        assert name in str(err.value)
    assert set(CONNECTORS) <= set(str(err.value).replace("'", " ").replace(",", " ").split())


@pytest.mark.parametrize("layer", [4, -5, [-2, 7]])
def test_feature_layer_out_of_range(layer):
    # A 3-block ViT has hidden states 0..3 (or -4..-1).
    with pytest.raises(ValueError, match="out of range"):
        tiny_config(vision_feature_layer=layer)


def test_vision_config_must_be_a_vision_backbone():
    with pytest.raises(ValueError, match="'llama' is not a supported vision backbone"):
        TinyLMMConfig(
            vision_config=text_config("llama").to_dict(), text_config=text_config("llama").to_dict()
        )


def test_text_config_must_be_a_causal_lm():
    with pytest.raises(ValueError, match="'clip_vision_model' is not a causal language model"):
        TinyLMMConfig(
            vision_config=vision_config("clip").to_dict(), text_config=vision_config("clip").to_dict()
        )


def test_unknown_select_strategy():
    with pytest.raises(ValueError, match="vision_feature_select_strategy must be one of"):
        tiny_config(vision_feature_select_strategy="cls_patch")


def test_identity_needs_equal_widths():
    with pytest.raises(ValueError, match=r"vision width \(48\) to equal the LLM width \(32\)"):
        TinyLMMConfig(
            vision_config=vision_config("clip", hidden_size=48).to_dict(),
            text_config=text_config("llama").to_dict(),
            connector_type="identity",
        )


def test_grid_connector_needs_patch_grid():
    # `full` keeps CLIP's CLS token: 17 tokens are not a grid.
    with pytest.raises(ValueError, match="needs the vision features as a patch grid"):
        tiny_config(connector="pixel_shuffle", vision_feature_select_strategy="full")


def test_dual_encoder_config_gives_its_vision_part():
    dual = CLIPConfig(vision_config=vision_config("clip").to_dict(), text_config={"hidden_size": 32})
    config = TinyLMMConfig(vision_config=dual, text_config=text_config("llama"))
    assert config.vision_config.model_type == "clip_vision_model"
    assert config.vision_config.hidden_size == 32


def test_building_and_saving_never_touch_the_network(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    model = tiny_model("siglip", "qwen3")
    model.save_pretrained(tmp_path)
    reloaded = TinyLMMConfig.from_pretrained(tmp_path)
    assert {**reloaded.to_dict(), "_name_or_path": ""} == {**model.config.to_dict(), "_name_or_path": ""}
