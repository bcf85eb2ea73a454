"""`tinylmm convert`: every conversion, each direction, gives the same logits (≤ 1e-4) when each model is fed by
its own processor on the same non-square image and prompt. Run with -s to see the figures."""

import json

import pytest
import torch
from _convert_fixtures import (
    IMAGE,
    PROMPT,
    TINYLLAVA_PROMPT,
    llava_checkpoint,
    max_diff,
    onevision_checkpoint,
    onevision_videos,
    report,
    tinyllava_checkpoint,
    tinyllava_inputs,
    video_frames,
)
from _processor_fixtures import rgb

from modeling_tinylmm import TinyLMMForConditionalGeneration
from trainers.cli import main as cli
from trainers.convert import ConversionError, convert
from trainers.convert.command import load_tinylmm

TOL = 1e-4
OV_PROMPT = "<|im_start|>user\n<image>\nwhat is in this image ?<|im_end|>\n<|im_start|>assistant\n"


def _logits(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


@pytest.mark.parametrize(
    ("vision", "strategy", "mode", "layer", "bias"),
    [
        ("clip", "default", "crop", -2, True),  # llava-hf LLaVA-1.5: CLS dropped, centre crop
        ("clip", "full", "pad", [-3, -2], False),  # CLS kept, padded, two layers, no projector bias
        ("siglip", "default", "resize", -2, True),  # LLaVA's default drops a real SigLIP patch: drop_first
    ],
)
def test_llava_in_and_out(tmp_path, vision, strategy, mode, layer, bias):
    src, processor = llava_checkpoint(
        tmp_path / "llava", vision=vision, strategy=strategy, image_mode=mode, layer=layer, bias=bias
    )
    inputs = processor(images=IMAGE, text=PROMPT, return_tensors="pt")
    expected = _logits(src, inputs)

    convert(tmp_path / "llava", tmp_path / "tinylmm")
    model, tp = load_tinylmm(tmp_path / "tinylmm")
    assert type(model) is TinyLMMForConditionalGeneration
    assert model.config.image_aspect_ratio == mode
    ours = tp(images=[IMAGE], text=PROMPT, return_tensors="pt")
    assert torch.equal(ours["input_ids"], inputs["input_ids"])
    got = _logits(model, ours)
    report(f"llava({vision}, {strategy}, {mode}) -> tinylmm", max_diff(got, expected))
    assert max_diff(got, expected) <= TOL

    convert(tmp_path / "tinylmm", tmp_path / "back", to="llava")
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    back = LlavaForConditionalGeneration.from_pretrained(tmp_path / "back").eval()
    bp = AutoProcessor.from_pretrained(tmp_path / "back")
    assert json.loads((tmp_path / "back" / "config.json").read_text())["model_type"] == "llava"
    assert "auto_map" not in json.loads((tmp_path / "back" / "config.json").read_text())
    again = _logits(back, bp(images=IMAGE, text=PROMPT, return_tensors="pt"))
    report(f"tinylmm -> llava({vision}, {strategy}, {mode})", max_diff(again, got))
    assert max_diff(again, got) <= TOL


def test_converted_folder_is_complete(tmp_path):
    llava_checkpoint(tmp_path / "llava")
    convert(tmp_path / "llava", tmp_path / "tinylmm")
    files = {p.name for p in (tmp_path / "tinylmm").iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "processor_config.json"} <= files
    assert {"README.md", "modeling_tinylmm.py", "processing_tinylmm.py"} <= files
    assert not any(f.endswith(".bin") for f in files)
    card = (tmp_path / "tinylmm" / "README.md").read_text()
    assert str(tmp_path / "llava") in card and "`llava`" in card
    # The card of every tinylmm folder: its parts, the template, and how to load and prompt it with an image.
    assert "| part | what | from | parameters |" in card and "`clip_vision_model`" in card
    assert "## Use" in card and "AutoModelForImageTextToText" in card and "fine-tuned version of" not in card
    convert(tmp_path / "tinylmm", tmp_path / "back", to="llava")
    exported = (tmp_path / "back" / "README.md").read_text()
    assert (
        str(tmp_path / "tinylmm") in exported and "LlavaForConditionalGeneration.from_pretrained" in exported
    )
    generation = json.loads((tmp_path / "tinylmm" / "generation_config.json").read_text())
    assert generation["eos_token_id"] == 2  # Vicuna: the turn ends with the tokenizer's EOS
    _, processor = load_tinylmm(tmp_path / "tinylmm")
    assert "{% generation %}" in processor.chat_template  # tinylmm's Vicuna template, trainable


def test_onevision_in_and_out(tmp_path):
    """An AnyRes image over several crops (unpadding + interpolation + newlines), a multi-image sample (each
    padded, 16 + 1 tokens) and a video (2x2 pooling, one newline after the frames)."""
    src, processor = onevision_checkpoint(tmp_path / "ov")
    convert(tmp_path / "ov", tmp_path / "tinylmm")
    model, tp = load_tinylmm(tmp_path / "tinylmm")
    image = rgb(90, 50, seed=2)
    figures = {}

    ours = tp(images=[image], text=OV_PROMPT, return_tensors="pt")
    layout = ours["image_layout"][0].tolist()
    assert layout[1] > 3 and (layout[10], layout[11]) != (layout[8], layout[9])  # several crops, interpolated
    expected = _logits(src, processor(images=image, text=OV_PROMPT, return_tensors="pt"))
    figures["anyres image"] = (_logits(model, ours), expected)

    two = OV_PROMPT.replace("<image>", "<image><image>")
    images = [[rgb(45, 29, seed=1), rgb(30, 50, seed=4)]]
    hf = processor(images=images, text=two, return_tensors="pt")
    ours = tp(images=images, text=two, return_tensors="pt")
    assert torch.equal(ours["input_ids"], hf["input_ids"])
    figures["multi-image"] = (_logits(model, ours), _logits(src, hf))

    frames = video_frames(3, 32)
    prompt = OV_PROMPT.replace("<image>", "<video>")
    hf = onevision_videos(processor, frames, prompt)
    ours = tp(videos=[frames], text=prompt, return_tensors="pt")
    assert torch.equal(ours["input_ids"], hf["input_ids"])
    figures["video"] = (_logits(model, ours), _logits(src, hf))
    for what, (got, want) in figures.items():
        report(f"llava_onevision -> tinylmm, {what}", max_diff(got, want))
        assert max_diff(got, want) <= TOL

    from transformers import LlavaOnevisionForConditionalGeneration

    from trainers.convert.onevision import OneVisionImageTextProcessor

    convert(tmp_path / "tinylmm", tmp_path / "back", to="llava_onevision")
    back = LlavaOnevisionForConditionalGeneration.from_pretrained(tmp_path / "back").eval()
    bp = OneVisionImageTextProcessor.from_pretrained(tmp_path / "back")
    saved = json.loads((tmp_path / "back" / "processor_config.json").read_text())
    assert saved["processor_class"] == "LlavaOnevisionProcessor"
    assert saved["video_processor"]["video_processor_type"] == "LlavaOnevisionVideoProcessor"
    for what, hf in (
        ("anyres image", bp(images=image, text=OV_PROMPT, return_tensors="pt")),
        ("multi-image", bp(images=images, text=two, return_tensors="pt")),
        ("video", onevision_videos(bp, frames, prompt)),
    ):
        got = _logits(back, hf)
        want = figures[what][0]
        report(f"tinylmm -> llava_onevision, {what}", max_diff(got, want))
        assert max_diff(got, want) <= TOL


@pytest.mark.parametrize(
    ("layout", "aspect", "text"),
    [("hub", "pad", "llama"), ("pretrain", "square", "llama"), ("hub", "pad", "phi")],
)
def test_tinyllava_in(tmp_path, layout, aspect, text):
    """SigLIP with the `patch` strategy: 16 patches, 15 image tokens (the 729 → 728 of the real models). Phi's
    LM head has a bias, as TinyLLaVA-Phi-2's has."""
    from transformers import SiglipImageProcessor

    src, tokenizer = tinyllava_checkpoint(tmp_path / "tl", layout=layout, aspect=aspect, text=text)
    ids, pixels = tinyllava_inputs(
        tokenizer,
        SiglipImageProcessor(size={"height": 32, "width": 32}),
        IMAGE,
        TINYLLAVA_PROMPT,
        aspect == "pad",
    )
    expected = src(ids, pixels)
    convert(tmp_path / "tl", tmp_path / "tinylmm")
    model, tp = load_tinylmm(tmp_path / "tinylmm")
    assert model.config.vision_feature_select_strategy == "drop_first"
    ours = tp(images=[IMAGE], text=TINYLLAVA_PROMPT, return_tensors="pt")
    assert int((ours["input_ids"] == model.config.image_token_id).sum()) == 15
    got = _logits(model, ours)[..., : expected.shape[-1]]  # the source's vocabulary (<image> is new)
    report(f"tinyllava({text}, {layout}, {aspect}) -> tinylmm", max_diff(got, expected))
    assert max_diff(got, expected) <= TOL
    # Through tinylmm, straight on to LLaVA (whose LM head has no bias: Phi's is refused).
    if text == "phi":
        with pytest.raises(ConversionError, match="the phi LM head has a bias"):
            convert(tmp_path / "tl", tmp_path / "llava", to="llava")
        return
    convert(tmp_path / "tl", tmp_path / "llava", to="llava")
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    llava = LlavaForConditionalGeneration.from_pretrained(tmp_path / "llava").eval()
    lp = AutoProcessor.from_pretrained(tmp_path / "llava")
    again = _logits(llava, lp(images=IMAGE, text=TINYLLAVA_PROMPT, return_tensors="pt"))[
        ..., : expected.shape[-1]
    ]
    report(f"tinyllava({text}, {layout}, {aspect}) -> llava", max_diff(again, expected))
    assert max_diff(again, expected) <= TOL


def test_lora_folder_is_refused(tmp_path):
    tinyllava_checkpoint(tmp_path / "tl")
    (tmp_path / "tl" / "adapter_config.json").write_text("{}")
    with pytest.raises(ConversionError, match="LoRA folder"):
        convert(tmp_path / "tl", tmp_path / "out")


@pytest.mark.parametrize(
    ("kwargs", "to", "match"),
    [
        (dict(connector="resampler"), "llava", "connector 'resampler' has no LLaVA equivalent"),
        (dict(vision="dinov2"), "llava", "vision backbone 'dinov2' has no LLaVA equivalent"),
        (dict(image_aspect_ratio="anyres"), "llava", "try --to llava_onevision"),
        (dict(image_aspect_ratio="pad"), "llava_onevision", "has no LLaVA-OneVision equivalent"),
    ],
)
def test_export_without_counterpart_is_refused(tmp_path, kwargs, to, match):
    from _processor_fixtures import make_processor
    from conftest import tiny_model

    kwargs = dict(kwargs)
    model = tiny_model(**kwargs)
    model.save_pretrained(tmp_path / "tinylmm")
    make_processor(config=model.config).save_pretrained(tmp_path / "tinylmm")
    with pytest.raises(ConversionError, match=match):
        convert(tmp_path / "tinylmm", tmp_path / "out", to=to)


def test_loading_a_llava_folder_says_to_convert(tmp_path):
    llava_checkpoint(tmp_path / "llava")
    with pytest.raises(
        ValueError, match=r"'llava' checkpoint, not a tinylmm one; convert it first: `tinylmm convert"
    ):
        TinyLMMForConditionalGeneration.from_pretrained(tmp_path / "llava")


def test_cli_converts_and_reports_errors_in_one_line(tmp_path, capsys):
    llava_checkpoint(tmp_path / "llava")
    assert cli(["convert", str(tmp_path / "llava"), str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert cli(["convert", str(tmp_path / "out"), str(tmp_path / "again")]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the save's progress bars: one line
    assert last.startswith("tinylmm convert: error:") and "already a tinylmm checkpoint" in last
    with pytest.raises(SystemExit):
        cli(["convert", "--help"])
    assert "--to llava_onevision" in capsys.readouterr().out


def test_pipeline_on_a_converted_folder(tmp_path):
    """transformers' image-text-to-text pipeline answers from a converted folder as from the source."""
    from transformers import pipeline

    llava_checkpoint(tmp_path / "llava")
    convert(tmp_path / "llava", tmp_path / "tinylmm", chat_template="source")
    messages = [
        {"role": "user", "content": [{"type": "image", "image": IMAGE}, {"type": "text", "text": "what"}]}
    ]
    answers = []
    for folder in ("llava", "tinylmm"):
        pipe = pipeline("image-text-to-text", model=str(tmp_path / folder), device="cpu")
        out = pipe(text=messages, max_new_tokens=5, do_sample=False, return_full_text=False)
        answers.append(out[0]["generated_text"])
    assert answers[0] == answers[1] and answers[0]


@pytest.mark.parametrize("size", [(45, 29), (29, 45), (33, 32), (100, 7)])
def test_crop_mode_is_clip_image_processor(size):
    """tinylmm's `crop` mode gives CLIPImageProcessor's pixels (shorter side resized, centre crop)."""
    from transformers import CLIPImageProcessor

    from processors import TinyLMMImageProcessor

    clip = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    ours = TinyLMMImageProcessor(
        size={"height": 32, "width": 32},
        image_mean=clip.image_mean,
        image_std=clip.image_std,
        image_aspect_ratio="crop",
        crop_tokens=[4, 4],
    )
    image = rgb(*size, seed=5)
    expected = clip(images=image, return_tensors="pt")["pixel_values"]
    got = ours(images=image, return_tensors="pt")["pixel_values"]
    assert got.shape == expected.shape and max_diff(got, expected) < 1e-5


def test_unknown_source_is_named(tmp_path):
    with pytest.raises(ConversionError, match="not a local folder and could not be fetched from the Hub"):
        convert("nobody/no-such-model", tmp_path / "out")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "config.json").write_text(json.dumps({"model_type": "qwen2_vl"}))
    with pytest.raises(ConversionError, match="model_type 'qwen2_vl'; tinylmm convert reads"):
        convert(tmp_path / "src", tmp_path / "out")
