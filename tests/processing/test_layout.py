"""Processor and model agree: the placeholders the processor writes for each visual input equal the
features the model makes for it, counted by running the model."""

import pytest
import torch
from _processor_fixtures import make_processor, make_tokenizer, rgb
from conftest import IMAGE_TOKEN, text_config, tiny_model, vision_config

import modeling_tinylmm.visual_layout as model_layout
import processors.image_processing_tinylmm as processor_layout
from modeling_tinylmm import TinyLMMConfig, TinyLMMForConditionalGeneration
from processors import TinyLMMProcessor


def test_layout_columns_agree():
    assert processor_layout.LAYOUT_FIELDS == model_layout.LAYOUT_FIELDS
    kinds = ("IMAGE", "ANYRES", "VIDEO")
    assert [getattr(processor_layout, k) for k in kinds] == [getattr(model_layout, k) for k in kinds]


def check_agreement(model, processor, batch, forward=False):
    with torch.no_grad():
        features = model.get_image_features(batch["pixel_values"], batch["image_layout"])
        if forward:  # the model's own check: placeholders in input_ids == features
            model(**batch)
    written = batch["image_layout"][:, -1].tolist()
    assert [f.shape[0] for f in features] == written
    assert int((batch["input_ids"] == processor.image_token_id).sum()) == sum(written)
    return written


# --- OneVision geometry: SigLIP 384 px, patch 14 (27 x 27 tokens per crop), anyres_max_9 -------------------


@pytest.fixture(scope="module")
def onevision():
    config = TinyLMMConfig(
        vision_config=vision_config(
            "siglip",
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,  # layer -2 is read: one block runs
            num_attention_heads=1,
            image_size=384,
            patch_size=14,
        ).to_dict(),
        # OneVision inputs run to 7371 tokens, past the tiny LLM's default 256 positions.
        text_config=text_config(max_position_embeddings=8192).to_dict(),
        image_token_id=IMAGE_TOKEN,
        image_aspect_ratio="anyres_max_9",
        image_grid_pinpoints=[[i * 384, j * 384] for i in range(1, 7) for j in range(1, 7)],
    )
    torch.manual_seed(0)
    model = TinyLMMForConditionalGeneration(config).eval()
    return model, TinyLMMProcessor.from_config(config, tokenizer=make_tokenizer())


@pytest.mark.parametrize(
    "size, tokens", [((384, 384), 1485), ((640, 480), 2929), ((1920, 1080), 7269), ((2304, 2304), 7371)]
)
def test_onevision_single_image_tokens(onevision, size, tokens):
    model, processor = onevision
    batch = processor(text=["<image>\nwhat is it ?"], images=[rgb(*size)], return_tensors="pt")
    assert check_agreement(model, processor, batch) == [tokens]


def test_onevision_multi_image_and_video_tokens(onevision):
    model, processor = onevision
    frames = [rgb(320, 240, seed=i) for i in range(3)]
    batch = processor(
        text=["<image> <image> two", "<video> frames"],
        images=[[rgb(640, 480), rgb(100, 300)], []],
        videos=[[], [frames]],
        padding=True,
        return_tensors="pt",
    )
    assert check_agreement(model, processor, batch, forward=True) == [730, 730, 3 * 196 + 1]


# --- Every encoder x connector x aspect-ratio mode of the tiny configs -------------------------------------

SPATIAL = ["identity", "linear", "mlp2x_gelu", "dense_sci", "dense_dci", "pixel_shuffle", "convnext_stage"]
NON_SPATIAL = ["resampler", "qformer", "dense_sti"]
MODES = ["pad", "resize", "anyres", "anyres_max_2"]
DENSE = {"dense_sci", "dense_dci", "dense_sti"}


def matrix():
    for vision in ["clip", "siglip", "dinov2", "convnext"]:
        for connector in SPATIAL + NON_SPATIAL:
            if vision == "convnext" and connector in DENSE:
                continue  # dense connectors fuse ViT layers
            modes = MODES if connector in SPATIAL else MODES[:2]
            for mode in modes:
                yield vision, connector, mode


def small_connector(connector):
    if connector in ("resampler", "qformer"):
        return {"num_queries": 6, "num_layers": 1, "num_heads": 2, "head_dim": 8}
    if connector == "convnext_stage":
        return {"depth": 1}
    if connector == "dense_dci":
        return {"num_groups": 3}  # the tiny ViTs have 3 blocks
    return None


@pytest.mark.parametrize("vision, connector, mode", list(matrix()))
def test_placeholders_match_features(vision, connector, mode):
    model = tiny_model(
        vision,
        connector=connector,
        image_aspect_ratio=mode,
        connector_config=small_connector(connector),
    )
    processor = TinyLMMProcessor.from_config(model.config, tokenizer=make_tokenizer())
    side = model.config.vision_config.image_size
    # tiny to very wide / tall, as the OneVision sizes scaled to the tiny crop
    sizes = [(3, 2), (30, 900), (900, 30), (side * 4 + 5, side * 3 - 7)]
    text = [f"<image> {i}" for i in range(len(sizes))] + ["<image> <image> two"]
    images = [[rgb(*s, seed=i)] for i, s in enumerate(sizes)] + [[rgb(50, 20), rgb(20, 50)]]
    videos = None
    if model.config.connector_grid is not None:
        text.append("<video> clip")
        images.append([])
        videos = [[]] * (len(text) - 1) + [[[rgb(40, 30, seed=i) for i in range(2)]]]
    batch = processor(text=text, images=images, videos=videos, padding=True, return_tensors="pt")
    check_agreement(model, processor, batch)


@pytest.mark.parametrize("vision, strategy", [("clip", "full"), ("siglip", "drop_first")])
def test_non_grid_selection_strategies(vision, strategy):
    model = tiny_model(vision, vision_feature_select_strategy=strategy)
    assert model.config.connector_grid is None
    processor = TinyLMMProcessor.from_config(model.config, tokenizer=make_tokenizer())
    batch = processor(
        text=["<image> a", "<image><image> b"],
        images=[rgb(9, 40), rgb(5, 5), rgb(60, 6)],
        padding=True,
        return_tensors="pt",
    )
    written = check_agreement(model, processor, batch)
    assert written == [model.config.image_seq_length] * 3


# --- The model follows the records and refuses records it cannot follow ------------------------------------


def test_arrange_follows_record_geometry():
    """ANYRES: base tokens, then the unpadded window row by row with a newline after each row."""
    d, crop = 3, 2
    crops = torch.arange(5 * crop * crop * d, dtype=torch.float).view(5, crop * crop, d)  # base + 2x2 grid
    newline = torch.full((d,), -1.0)
    record = dict(
        kind=model_layout.ANYRES,
        num_crops=5,
        grid_rows=2,
        grid_cols=2,
        crop_h=crop,
        crop_w=crop,
        top=1,
        left=0,
        height=2,
        width=4,
        out_h=2,
        out_w=4,
        newline=1,
        num_tokens=4 + 2 * 5,
    )
    layout = torch.tensor([[record[f] for f in model_layout.LAYOUT_FIELDS]])
    (out,) = model_layout.arrange(crops, layout, (crop, crop), newline, None)
    assert torch.equal(out[:4], crops[0])
    # the 4x4 token map of the grid, rows 1..2: row 1 = bottom row of crops 1, 2; row 2 = top row of crops 3, 4
    fmap = crops[1:].view(2, 2, crop, crop, d).permute(0, 2, 1, 3, 4).reshape(4, 4, d)
    rows = out[4:].view(2, 5, d)
    assert torch.equal(rows[:, :4], fmap[1:3])
    assert torch.equal(rows[:, 4], newline.expand(2, d))


def test_arrange_pools_video_frames_bilinearly():
    d = 2
    frames = torch.randn(3, 16, d)
    record = dict(
        kind=model_layout.VIDEO,
        num_crops=3,
        grid_rows=1,
        grid_cols=1,
        crop_h=4,
        crop_w=4,
        top=0,
        left=0,
        height=4,
        width=4,
        out_h=2,
        out_w=2,
        newline=0,
        num_tokens=12,
    )
    layout = torch.tensor([[record[f] for f in model_layout.LAYOUT_FIELDS]])
    (out,) = model_layout.arrange(frames, layout, (4, 4), None, None)
    expected = (
        torch.nn.functional.interpolate(
            frames.view(3, 4, 4, d).permute(0, 3, 1, 2), size=(2, 2), mode="bilinear"
        )
        .permute(0, 2, 3, 1)
        .reshape(12, d)
    )
    assert torch.allclose(out, expected)


def test_model_refuses_layout_of_another_config():
    model = tiny_model(image_aspect_ratio="pad")
    other = make_processor(image_aspect_ratio="anyres", image_grid_pinpoints=[[32, 64]])
    batch = other(text=["<image> a"], images=[rgb(80, 40)], return_tensors="pt")
    with pytest.raises(ValueError, match="image_newline"):
        model.get_image_features(batch["pixel_values"], batch["image_layout"])
    shuffled = tiny_model(connector="pixel_shuffle")
    batch = make_processor()(text=["<image> a"], images=[rgb(8, 8)], return_tensors="pt")
    with pytest.raises(ValueError, match="token grid per crop"):
        shuffled.get_image_features(batch["pixel_values"], batch["image_layout"])
    with pytest.raises(ValueError, match="pixel_values holds 2"):
        model.get_image_features(torch.cat([batch["pixel_values"]] * 2), batch["image_layout"])


def test_generate_forwards_layout_after_prefill():
    """generate drops pixel_values after the first step but keeps image_layout; the model ignores it."""
    model = tiny_model(image_aspect_ratio="anyres_max_2")
    processor = TinyLMMProcessor.from_config(model.config, tokenizer=make_tokenizer())
    batch = processor(text=["<image> a"], images=[rgb(100, 50)], return_tensors="pt")
    out = model.generate(**batch, max_new_tokens=4, do_sample=False)
    assert out.shape == (1, batch["input_ids"].shape[1] + 4)
