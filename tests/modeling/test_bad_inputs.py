"""Bad model, config and input values: each is refused with a message that names the problem."""

import json
import logging
import os

import pytest
import torch
from conftest import (
    IMAGE_TOKEN,
    VOCAB,
    image_prompt,
    pixels,
    text_config,
    tiny_config,
    tiny_model,
    vision_config,
)
from isolated import run_isolated
from transformers import AutoConfig, AutoModelForImageTextToText

from modeling_tinylmm import TinyLMMConfig, TinyLMMForConditionalGeneration
from modeling_tinylmm.modeling_tinylmm import CACHE_FIELD

_TINY_ENCODER = dict(
    vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4
)


def _config(text, **kwargs):
    return TinyLMMConfig(vision_config=vision_config().to_dict(), text_config=text.to_dict(), **kwargs)


# -- the text model --------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_type", ["bert", "roberta", "bert-generation"])
def test_encoder_text_model_is_refused(model_type):
    encoder = AutoConfig.for_model(model_type, **_TINY_ENCODER)
    with pytest.raises(
        ValueError, match=f"'{model_type}' is an encoder: it attends to the tokens after"
    ) as err:
        _config(encoder)
    assert "is_decoder=True" in str(err.value)


def test_encoder_decoder_text_model_is_refused():
    bart = AutoConfig.for_model("bart", vocab_size=VOCAB, d_model=32, encoder_layers=1, decoder_layers=1)
    with pytest.raises(ValueError, match="'bart' is an encoder-decoder model; tinylmm needs a decoder-only"):
        _config(bart)


def test_bert_run_as_a_decoder_is_causal():
    # With is_decoder=True the BERT body masks the future: what BertLMHeadModel is made for.
    config = _config(
        AutoConfig.for_model("bert", is_decoder=True, **_TINY_ENCODER), image_token_id=IMAGE_TOKEN
    )
    torch.manual_seed(0)
    model = TinyLMMForConditionalGeneration(config).eval()
    ids = torch.tensor([[1, 5, 6, 7, 8]])
    changed = ids.clone()
    changed[0, -1] = 9
    with torch.no_grad():
        a, b = model(input_ids=ids).logits, model(input_ids=changed).logits
    assert torch.equal(a[0, :-1], b[0, :-1])


# -- config values -------------------------------------------------------------------------------------


@pytest.mark.parametrize("connector", ["resampler", "qformer"])
@pytest.mark.parametrize("value", [0, -3])
def test_connector_with_no_queries(connector, value):
    with pytest.raises(ValueError, match=r"connector_config\['num_queries'\] must be a positive integer"):
        tiny_config(connector=connector, connector_config={"num_queries": value})


@pytest.mark.parametrize("connector", ["resampler", "qformer"])
def test_connector_with_no_layers(connector):
    with pytest.raises(ValueError, match=r"connector_config\['num_layers'\] must be a positive integer"):
        tiny_config(connector=connector, connector_config={"num_layers": 0})


@pytest.mark.parametrize("layer", ["-2", [-2, "-1"], -2.0])
def test_vision_feature_layer_must_be_an_int(layer):
    with pytest.raises(TypeError, match="vision_feature_layer must be an int or a list of ints"):
        tiny_config(vision_feature_layer=layer)


@pytest.mark.parametrize("name", ["image_token_id", "video_token_id"])
def test_token_id_must_be_an_int(name):
    with pytest.raises(TypeError, match=f"{name} must be an int .* got '95'"):
        _config(text_config(), **{name: "95"})


@pytest.mark.parametrize("token_id", [VOCAB, 500, -1])
def test_image_token_id_must_lie_in_the_vocabulary(token_id):
    with pytest.raises(
        ValueError, match=rf"image_token_id {token_id} is outside .* \(vocab_size {VOCAB}: ids 0"
    ):
        _config(text_config(), image_token_id=token_id)


# -- inputs ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64])
def test_integer_pixel_values_are_refused(model, dtype):
    raw = (pixels(model.config) * 60 + 128).clamp(0, 255).to(dtype)
    with pytest.raises(TypeError, match=f"pixel_values are {dtype}, not normalised .* with the processor"):
        model(input_ids=image_prompt(model.config), pixel_values=raw)


def test_raw_0_255_float_pixels_are_refused(model):
    raw = (pixels(model.config) * 60 + 128).clamp(0, 255)
    with pytest.raises(ValueError, match="look like raw 0–255 values. Build pixel_values with the processor"):
        model(input_ids=image_prompt(model.config), pixel_values=raw)


@pytest.mark.parametrize(
    ("bad", "expected"), [(float("nan"), "1 NaN and 0 infinite"), (float("inf"), "0 NaN and 1")]
)
def test_non_finite_pixels_are_refused(model, bad, expected):
    px = pixels(model.config)
    px[0, 1, 2, 3] = bad
    with pytest.raises(
        ValueError, match=f"pixel_values hold {expected} .* the logits and the loss would be NaN"
    ):
        model(input_ids=image_prompt(model.config), pixel_values=px)


def test_pixel_values_without_batch_dimension(model):
    with pytest.raises(ValueError, match=r"Add a batch dimension, \(1, 3, H, W\)"):
        model(input_ids=image_prompt(model.config), pixel_values=pixels(model.config)[0])
    with pytest.raises(ValueError, match=r"Add a batch dimension"):
        model.get_image_features(pixels(model.config)[0])


def test_channels_last_pixel_values(model):
    with pytest.raises(ValueError, match=r"shape \(1, 32, 32, 3\); the model takes \(num_crops, 3, H, W\)"):
        model(input_ids=image_prompt(model.config), pixel_values=pixels(model.config).permute(0, 2, 3, 1))


@pytest.mark.parametrize("with_image", [False, True])
def test_input_ids_outside_the_vocabulary(model, with_image):
    ids = torch.cat([image_prompt(model.config), torch.tensor([[VOCAB + 4, -200]])], dim=1)
    px = pixels(model.config) if with_image else None
    if not with_image:
        ids = ids[:, ids[0] != IMAGE_TOKEN]
    with pytest.raises(
        ValueError, match=rf"2 id\(s\) outside the vocabulary \(ids 0 … {VOCAB - 1}\): smallest -200, "
    ):
        model(input_ids=ids, pixel_values=px)


# -- positions -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["llama", "gpt2"])
def test_sequence_longer_than_the_position_limit(text):
    model = tiny_model(text=text)  # both take 256 positions
    with pytest.raises(
        ValueError, match=r"needs position 299, .* positions 0 … 255 \(max_position_embeddings 256\)"
    ):
        model(input_ids=torch.full((1, 300), 5))


def test_decoding_past_the_position_limit():
    model = tiny_model()
    with torch.no_grad():
        cache = getattr(model(input_ids=torch.full((1, 250), 5), use_cache=True), CACHE_FIELD)
        model(input_ids=torch.full((1, 6), 5), cache=cache, use_cache=True)  # positions 250 … 255: fine
        with pytest.raises(ValueError, match=r"needs position 256, .* 1 token\(s\) after 256 cached"):
            model(input_ids=torch.full((1, 1), 5), cache=cache, use_cache=True)


def test_packed_rows_are_judged_by_their_position_ids():
    model = tiny_model()
    ids = torch.full((1, 300), 5)
    with torch.no_grad():
        model(input_ids=ids, position_ids=torch.arange(150).repeat(2)[None])  # two samples, positions restart
    with pytest.raises(ValueError, match="needs position 259"):
        model(input_ids=ids, position_ids=torch.cat([torch.arange(40), torch.arange(260)])[None])


def test_positions_within_the_limit_are_not_read():
    # Within the limit the check stays on Python ints: no host read of position_ids (it would fail on meta).
    model = tiny_model()
    model.model._check_positions(10, 200, torch.empty(1, 10, dtype=torch.long, device="meta"))
    with pytest.raises(Exception, match="meta"):
        model.model._check_positions(10, 250, torch.empty(1, 10, dtype=torch.long, device="meta"))


@pytest.mark.parametrize(
    ("rope", "limit"),
    [
        (
            {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 256},
            1024,
        ),  # Qwen2.5 style
        (
            {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64},
            256,
        ),  # already extended
        ({"rope_type": "linear", "factor": 2.0}, 512),
        ({"rope_type": "dynamic", "factor": 2.0}, None),
    ],
)
def test_position_limit_follows_rope_scaling(rope, limit):
    config = _config(text_config("qwen2", rope_parameters={"rope_theta": 10000.0, **rope}))
    assert config.max_positions == limit


# -- loading checkpoints ---------------------------------------------------------------------------------


def _save_with_config(tmp_path, model, **changes):
    folder = tmp_path / "checkpoint"
    model.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_connector_weights_of_another_shape_are_refused(tmp_path):
    folder = _save_with_config(tmp_path, tiny_model(connector="mlp3x_gelu"), connector_type="mlp2x_gelu")
    with pytest.raises(
        ValueError,
        match=r"do not fit .* 2 checkpoint weight\(s\) the model has no place for: "
        r"model\.connector\.mlp\.4\.bias, model\.connector\.mlp\.4\.weight",
    ):
        AutoModelForImageTextToText.from_pretrained(folder)


def test_connector_weights_missing_from_the_checkpoint_are_refused(tmp_path):
    folder = _save_with_config(tmp_path, tiny_model(), connector_type="mlp3x_gelu")
    with pytest.raises(
        ValueError, match=r"2 weight\(s\) of the model missing from the checkpoint: model\.connector"
    ):
        TinyLMMForConditionalGeneration.from_pretrained(folder)


def test_vision_blocks_missing_from_the_checkpoint_are_refused(tmp_path):
    # Saved reading HS[-2] (2 of 3 blocks kept); the config now reads HS[-1], whose block was never saved.
    folder = _save_with_config(tmp_path, tiny_model(), vision_feature_layer=-1)
    with pytest.raises(
        ValueError, match=r"missing from the checkpoint: model\.vision_tower\.encoder\.layers\.2\."
    ):
        TinyLMMForConditionalGeneration.from_pretrained(folder)


def test_vision_blocks_past_the_read_ones_are_dropped_with_a_count(tmp_path, caplog):
    source = tiny_model(vision_feature_layer=-1)  # keeps all 3 blocks
    folder = _save_with_config(tmp_path, source, vision_feature_layer=-2)
    with caplog.at_level(logging.WARNING):
        model, info = TinyLMMForConditionalGeneration.from_pretrained(folder, output_loading_info=True)
    assert (
        "16 vision tower weight(s) of blocks or heads this config does not read were not loaded"
        in caplog.text
    )
    assert len(model.model.vision_tower.encoder.layers) == 2
    assert any(k.startswith("model.vision_tower.encoder.layers.2.") for k in info["unexpected_keys"])
    for name, weight in model.model.vision_tower.state_dict().items():
        assert torch.equal(weight, source.model.vision_tower.state_dict()[name]), name


def test_own_checkpoint_loads_without_complaint(tmp_path, caplog):
    source = tiny_model("siglip", "gpt2", "resampler", connector_config={"num_queries": 4, "num_layers": 1})
    source.save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING):
        model, info = TinyLMMForConditionalGeneration.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert "LOAD REPORT" not in caplog.text


def test_remote_code_refuses_connector_weights_of_another_shape(tmp_path):
    folder = _save_with_config(tmp_path, tiny_model(connector="mlp3x_gelu"), connector_type="mlp2x_gelu")
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    out = run_isolated(
        f"""
        from transformers import AutoModelForImageTextToText
        try:
            AutoModelForImageTextToText.from_pretrained({str(folder)!r}, trust_remote_code=True)
        except ValueError as err:
            print("REFUSED", err)
        """,
        cwd=workdir,
        modules_cache=tmp_path / "modules",
    )
    assert "REFUSED" in out and "model.connector.mlp.4.weight" in out


def test_truncated_weights_file_is_named(tmp_path):
    tiny_model().save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(os.path.getsize(weights) // 2)
    with pytest.raises(OSError, match=rf"weights file {weights} is truncated or corrupt"):
        AutoModelForImageTextToText.from_pretrained(tmp_path)
