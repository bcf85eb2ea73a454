"""TinyLMMProcessor and TinyLMMImageProcessor: pixels, marker expansion, batching, bad input."""

import sys

import numpy as np
import pytest
import torch
from _processor_fixtures import VIDEO_TOKEN, make_processor, make_tokenizer, rgb
from conftest import IMAGE_TOKEN, tiny_config, tiny_model
from PIL import Image
from transformers import LlavaOnevisionImageProcessorPil

from processors import TinyLMMImageProcessor, TinyLMMProcessor
from processors.image_processing_tinylmm import ANYRES, IMAGE, VIDEO

PINPOINTS = [[i * 32, j * 32] for i in range(1, 4) for j in range(1, 4)]


def kinds(batch):
    return batch["image_layout"][:, 0].tolist()


# --- Pixels ------------------------------------------------------------------------------------------------


def test_pixels_and_records_follow_marker_order():
    processor = make_processor()
    ip = processor.image_processor
    a, b = rgb(40, 30, seed=1), rgb(20, 50, seed=2)
    video = [rgb(30, 30, seed=i) for i in range(3)]
    batch = processor(
        text=["what <video> is <image> ?", "<image> this"], images=[a, b], videos=[video], padding=True
    )
    # sample 0 holds two visual inputs of different kinds: each is padded, as one of several in a sample
    expected = np.concatenate(
        [ip.video_frames(video)[0], ip.image_crops(a, single=False)[0], ip.image_crops(b)[0]]
    )
    assert np.array_equal(batch["pixel_values"], expected)
    assert batch["image_layout"][:, 0].tolist() == [VIDEO, IMAGE, IMAGE]
    # video_token_id is None in the config: videos are filled through the image placeholder
    ids = batch["input_ids"][0]
    first = ids.index(IMAGE_TOKEN)
    assert ids[first : first + 3 * 4] == [IMAGE_TOKEN] * 12  # 3 frames pooled 4x4 -> 2x2
    assert ids.count(IMAGE_TOKEN) == 12 + 16


def test_flat_and_nested_images_give_the_same_batch():
    processor = make_processor(image_aspect_ratio="anyres", image_grid_pinpoints=PINPOINTS)
    images = [rgb(70, 40, seed=1), rgb(20, 50, seed=2), rgb(33, 33, seed=3)]
    text = ["<image> one", "<image> <image> two", "none"]
    flat = processor(text=text, images=images, padding=True, return_tensors="pt")
    nested = processor(text=text, images=[images[:1], images[1:], []], padding=True, return_tensors="pt")
    for key in ("input_ids", "attention_mask", "pixel_values", "image_layout"):
        assert torch.equal(flat[key], nested[key])
    # a single image gets AnyRes; the two images of sample 1 are padded, each with one newline
    assert kinds(flat) == [ANYRES, IMAGE, IMAGE]
    assert flat["image_layout"][1:, -1].tolist() == [17, 17]


def test_pad_mode_fills_with_the_mean_colour():
    processor = make_processor()  # CLIP normalisation
    red = Image.new("RGB", (64, 32), (255, 0, 0))
    pixels = processor(text="<image>", images=[red])["pixel_values"][0]
    mean, std = np.array(processor.image_processor.image_mean), np.array(processor.image_processor.image_std)
    band = pixels[:, :5, :]  # the 64x64 square holds the image in rows 16..47 (8..23 once resized to 32)
    assert np.abs(band - ((np.floor(mean * 255) / 255 - mean) / std)[:, None, None]).max() < 1e-5
    assert np.allclose(pixels[:, 10:22, :], ((np.array([1.0, 0, 0]) - mean) / std)[:, None, None], atol=1e-5)


def test_resize_mode_stretches():
    processor = make_processor(image_aspect_ratio="resize")
    red = Image.new("RGB", (64, 32), (255, 0, 0))
    pixels = processor(text="<image>", images=[red])["pixel_values"][0]
    mean, std = np.array(processor.image_processor.image_mean), np.array(processor.image_processor.image_std)
    assert np.allclose(pixels, ((np.array([1.0, 0, 0]) - mean) / std)[:, None, None], atol=1e-5)


@pytest.mark.parametrize("size", [(70, 40), (40, 90), (96, 96), (5, 3)])
def test_crops_equal_transformers_llava_onevision(size):
    """Same pinpoints, size and normalisation: AnyRes crops (base first, then row-major, black centre pad)
    and the padded images of a multi-image sample equal transformers' LLaVA-OneVision processor's."""
    processor = make_processor(image_aspect_ratio="anyres", image_grid_pinpoints=PINPOINTS)
    ip = processor.image_processor
    reference = LlavaOnevisionImageProcessorPil(
        size={"height": 32, "width": 32},
        image_grid_pinpoints=PINPOINTS,
        image_mean=ip.image_mean,
        image_std=ip.image_std,
        do_pad=False,
    )
    image, other = rgb(*size, seed=3), rgb(30, 20, seed=4)
    ours = ip.image_crops(image)[0]
    theirs = reference.preprocess([image], return_tensors="np")["pixel_values"][0]
    assert ours.shape == theirs.shape and np.allclose(ours, theirs, atol=1e-5)
    ours = np.concatenate([ip.image_crops(image, single=False)[0], ip.image_crops(other, single=False)[0]])
    theirs = np.concatenate(reference.preprocess([[image, other]], return_tensors="np")["pixel_values"])
    assert ours.shape == theirs.shape and np.allclose(ours, theirs, atol=1e-5)


def test_video_frames_are_sampled_uniformly():
    processor = make_processor(video_max_frames=4)
    ip = processor.image_processor
    frames = [np.full((20, 30, 3), 20 * i, dtype=np.uint8) for i in range(10)]
    pixels, record = ip.video_frames(frames)
    assert record[1] == 4  # num_crops
    first_value = (pixels[:, 0, 0, 0] * ip.image_std[0] + ip.image_mean[0]) * 255
    assert np.allclose(first_value, [0, 60, 120, 180], atol=1e-3)  # frames 0, 3, 6, 9
    as_array, _ = ip.video_frames(np.stack(frames))
    assert np.array_equal(as_array, pixels)
    few, record = ip.video_frames(frames[:3])
    assert record[1] == 3 and few.shape[0] == 3


def test_text_only_batch_has_no_pixels():
    processor = make_processor()
    batch = processor(text=["what is this ?", "a red circle"], padding=True, return_tensors="pt")
    assert set(batch) == {"input_ids", "attention_mask"}
    assert processor.batch_decode(batch["input_ids"], skip_special_tokens=True) == [
        "what is this ?",
        "a red circle",
    ]


def test_padding_side_and_decode():
    processor = make_processor()
    batch = processor(
        text=["<image> what is this ?", "yes"],
        images=[[rgb(8, 8)], []],
        padding=True,
        padding_side="left",
        return_tensors="pt",
    )
    pad = processor.tokenizer.pad_token_id
    assert batch["input_ids"][1, 0] == pad and batch["input_ids"][0, 0] != pad
    assert batch["attention_mask"].sum(1).tolist() == [16 + 4, 1]
    assert processor.batch_decode(batch["input_ids"], skip_special_tokens=True) == ["what is this ?", "yes"]


def test_separate_video_placeholder():
    config = tiny_config(video_token_id=VIDEO_TOKEN)
    processor = TinyLMMProcessor.from_config(config, tokenizer=make_tokenizer())
    batch = processor(text="<video> <image>", images=[rgb(8, 8)], videos=[[rgb(8, 8)] * 2])
    ids = batch["input_ids"][0]
    assert ids.count(VIDEO_TOKEN) == 8 and ids.count(IMAGE_TOKEN) == 16
    assert ids.index(VIDEO_TOKEN) < ids.index(IMAGE_TOKEN)


# --- The processor matches the model config ----------------------------------------------------------------


def test_from_config_reads_geometry_and_options():
    config = tiny_config(
        "siglip",
        connector="pixel_shuffle",
        image_aspect_ratio="anyres_max_4",
        image_grid_pinpoints=[[32, 64], [64, 32]],
        video_max_frames=5,
        video_pool_stride=1,
    )
    ip = make_processor(config=config).image_processor
    assert ip.size == {"height": 32, "width": 32}
    assert ip.image_mean == [0.5, 0.5, 0.5]  # SigLIP's normalisation
    assert ip.crop_tokens == [2, 2] and ip.image_seq_length == 4  # 4x4 patches, pixel shuffle by 2
    assert ip.image_grid_pinpoints == [[32, 64], [64, 32]] and ip.max_crops == 4
    assert (ip.video_max_frames, ip.video_pool_stride) == (5, 1)
    assert make_processor(config=tiny_config()).image_processor.image_mean[0] == pytest.approx(0.48145466)
    resampler = make_processor(config=tiny_config(connector="resampler", connector_config={"num_queries": 7}))
    assert resampler.image_processor.crop_tokens is None
    assert resampler(text="<image>", images=[rgb(9, 9)])["input_ids"][0].count(IMAGE_TOKEN) == 7


def test_round_trip_generate_in_one_padded_batch():
    """processor -> model -> generate -> batch_decode for a single image, an AnyRes image, two images, a
    video and a text-only prompt in one left-padded batch; each row generates what it does alone."""
    model = tiny_model(image_aspect_ratio="anyres_max_4", image_grid_pinpoints=PINPOINTS)
    processor = TinyLMMProcessor.from_config(model.config, tokenizer=make_tokenizer())
    samples = [
        ("<image> what is this ?", [rgb(32, 32, seed=1)], []),
        ("<image> describe the picture", [rgb(96, 60, seed=2)], []),
        ("<image> <image> how many shapes ?", [rgb(40, 20, seed=3), rgb(20, 40, seed=4)], []),
        ("<video> what is in the video ?", [], [[rgb(30, 30, seed=i) for i in range(3)]]),
        ("is the circle red ?", [], []),
    ]
    text, images, videos = (list(x) for x in zip(*samples))
    batch = processor(
        text=text, images=images, videos=videos, padding=True, padding_side="left", return_tensors="pt"
    )
    assert kinds(batch) == [ANYRES, ANYRES, IMAGE, IMAGE, VIDEO]
    assert batch["image_layout"][1, 1] > 1 and batch["image_layout"][0, 1] == 2  # grid crops vs base + 1
    out = model.generate(**batch, max_new_tokens=3, do_sample=False)
    new = out[:, batch["input_ids"].shape[1] :]
    decoded = processor.batch_decode(out, skip_special_tokens=True)
    for i, (t, ims, vids) in enumerate(samples):
        alone = processor(text=[t], images=[ims], videos=[vids], return_tensors="pt")
        expected = model.generate(**alone, max_new_tokens=3, do_sample=False)[0, -3:]
        assert torch.equal(new[i], expected), i
        prompt_words = t.replace("<image>", "").replace("<video>", "").split()
        assert decoded[i].split()[: len(prompt_words)] == prompt_words
        assert decoded[i] == processor.decode(
            torch.cat([alone["input_ids"][0], expected]), skip_special_tokens=True
        )


# --- Bad input ---------------------------------------------------------------------------------------------


def test_marker_and_image_counts_must_match():
    processor = make_processor()
    with pytest.raises(ValueError, match=r"2 <image> marker\(s\).*1 image"):
        processor(text="<image> <image>", images=[rgb(8, 8)])
    with pytest.raises(ValueError, match=r"1 <image> marker\(s\).*2 image"):
        processor(text="<image>", images=[rgb(8, 8), rgb(8, 8)])
    with pytest.raises(ValueError, match=r"sample 1 has 1 <image> marker\(s\) in its text but 0"):
        processor(text=["<image>", "<image>"], images=[[rgb(8, 8)], []])
    with pytest.raises(ValueError, match=r"1 <image> marker\(s\).*0 image"):
        processor(text="<image> a")
    with pytest.raises(ValueError, match=r"1 <video> marker\(s\).*0 video"):
        processor(text="<video> a", videos=[[]])


def test_image_files(tmp_path):
    processor = make_processor()
    good = tmp_path / "good.png"
    rgb(20, 10).save(good)
    assert processor(text="<image>", images=[str(good)])["pixel_values"].shape == (1, 3, 32, 32)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        processor(text="<image>", images=[str(tmp_path / "missing.png")])
    text_file = tmp_path / "notes.png"
    text_file.write_text("not an image")
    with pytest.raises(ValueError, match="notes.png.*could not be decoded"):
        processor(text="<image>", images=[str(text_file)])
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ValueError, match="truncated.png.*could not be decoded"):
        processor(text="<image>", images=[str(truncated)])
    with pytest.raises(ValueError, match="sample 0, image 1: image bytes could not be decoded"):
        processor(text="<image>", images=[good.read_bytes()[:200]])


def test_grayscale_rgba_and_palette_are_converted():
    processor = make_processor()
    base = rgb(24, 16, seed=5)

    def pixels(image):
        return processor(text="<image>", images=[image])["pixel_values"]

    assert np.array_equal(pixels(base.convert("L")), pixels(base.convert("L").convert("RGB")))
    assert np.array_equal(pixels(base.convert("P")), pixels(base.convert("P").convert("RGB")))
    transparent = base.convert("RGBA")
    transparent.putalpha(0)
    assert np.array_equal(pixels(transparent), pixels(Image.new("RGB", base.size, (255, 255, 255))))
    gray_array = np.asarray(base.convert("L"))
    assert np.array_equal(pixels(gray_array), pixels(base.convert("L")))


def test_zero_size_images_and_empty_videos():
    processor = make_processor()
    with pytest.raises(ValueError, match=r"zero size \(0x5\)"):
        processor(text="<image>", images=[Image.new("RGB", (0, 5))])
    with pytest.raises(ValueError, match="zero size"):
        processor(text="<image>", images=[np.zeros((0, 4, 3), np.uint8)])
    with pytest.raises(ValueError, match="sample 0, video 1: a video has no frames"):
        processor(text="<video>", videos=[[[]]])
    with pytest.raises(ValueError, match="no frames"):
        processor(text="<video>", videos=[np.zeros((0, 8, 8, 3), np.uint8)])


def test_layouts_the_connector_cannot_follow():
    with pytest.raises(ValueError, match="does not keep a patch grid"):
        tiny_config(connector="resampler", image_aspect_ratio="anyres")
    with pytest.raises(ValueError, match="connector resampler keeps no token grid"):
        TinyLMMImageProcessor(image_aspect_ratio="anyres", image_seq_length=8, connector_type="resampler")
    processor = make_processor(config=tiny_config(connector="qformer"))
    with pytest.raises(ValueError, match="videos need a connector that keeps the patch grid.*qformer"):
        processor(text="<video>", videos=[[rgb(8, 8)]])


def test_truncation_through_an_image_is_refused():
    processor = make_processor()
    with pytest.raises(ValueError, match="sample 0 holds 7 placeholder tokens.*need 16.*truncation"):
        processor(text="what is <image>", images=[rgb(8, 8)], truncation=True, max_length=9)
    # a raw placeholder token written in the text (here the marker is something else) is caught too
    raw = TinyLMMProcessor(
        processor.image_processor, processor.tokenizer, image_token_id=IMAGE_TOKEN, image_token="[img]"
    )
    with pytest.raises(ValueError, match="holds 17 placeholder tokens"):
        raw(text="[img] <image>", images=[rgb(8, 8)])


def test_placeholder_must_be_one_special_token():
    tokenizer = make_tokenizer()
    word = tokenizer.convert_tokens_to_ids("what")
    with pytest.raises(
        ValueError, match=f"placeholder token id {word} \\('what'\\) is not a single special token"
    ):
        TinyLMMProcessor(make_processor().image_processor, tokenizer, image_token_id=word)
    with pytest.raises(
        ValueError, match="placeholder token id 3 \\('<unk>'\\)"
    ):  # a marker the vocabulary lacks
        TinyLMMProcessor(make_processor().image_processor, tokenizer, image_token="[img]")


def test_unknown_arguments_are_refused():
    with pytest.raises(TypeError, match="unexpected arguments"):
        make_processor()(text="hi", paddding=True)


def test_video_files_need_a_decoder(tmp_path, monkeypatch):
    processor = make_processor()
    with pytest.raises(FileNotFoundError, match="video file .*missing.mp4"):
        processor(text="<video>", videos=[str(tmp_path / "missing.mp4")])
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"\x00" * 64)
    monkeypatch.setitem(sys.modules, "av", None)  # as if PyAV were not installed
    with pytest.raises(ImportError, match="needs PyAV: pip install av"):
        processor(text="<video>", videos=[str(clip)])
