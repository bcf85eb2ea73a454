"""One call composes pretrained parts into a model *and* its processor, ready to train; the normalisation comes
from one table of backbone facts (or the vision checkpoint's own image processor)."""

import pytest
import torch
import transformers
from conftest import VOCAB, text_config, vision_config
from PIL import Image
from tokenizers import Tokenizer, pre_tokenizers
from tokenizers.models import WordLevel
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    CLIPImageProcessor,
    PreTrainedTokenizerFast,
)
from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES

from modeling_tinylmm import TinyLMMForConditionalGeneration
from modeling_tinylmm.vision_features import BACKBONES
from processors import CHAT_TEMPLATES, TinyLMMProcessor
from trainers.build import compose


def _tokenizer() -> PreTrainedTokenizerFast:
    """A ChatML word-level tokenizer that fills the tiny LLM's vocabulary exactly, with no <image>."""
    specials = ["<pad>", "<s>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>"]
    words = "a the what is in this image describe red blue circle square user assistant system . ?".split()
    vocab = specials + words + [f"w{i}" for i in range(VOCAB - len(specials) - len(words))]
    backend = Tokenizer(WordLevel({t: i for i, t in enumerate(vocab)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": specials[4:]})
    return tokenizer


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("parts")
    torch.manual_seed(0)
    AutoModel.from_config(vision_config("clip")).save_pretrained(root / "vision")
    AutoModelForCausalLM.from_config(text_config("qwen2")).save_pretrained(root / "llm")
    _tokenizer().save_pretrained(root / "llm")
    return root


def _chat():
    return [
        [
            {
                "role": "user",
                "content": [{"type": "image"}, {"type": "text", "text": "what is in this image ?"}],
            },
            {"role": "assistant", "content": "a red circle ."},
        ]
    ]


def test_compose_gives_a_model_and_processor_ready_to_train(parts, tmp_path):
    model, processor = compose(parts / "vision", parts / "llm")
    # The image token was added to the tokenizer and the vocabulary grew by one row for it.
    assert processor.tokenizer.convert_tokens_to_ids("<image>") == model.config.image_token_id == VOCAB
    assert model.get_input_embeddings().weight.shape[0] == len(processor.tokenizer) == VOCAB + 1
    assert processor.chat_template == CHAT_TEMPLATES["chatml"]  # guessed from the tokenizer's turn tokens

    batch = processor.apply_chat_template(
        _chat(),
        images=[[Image.new("RGB", (40, 30), "red")]],
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
        return_tensors="pt",
    )
    labels = batch["input_ids"].masked_fill(batch.pop("assistant_masks") == 0, -100)
    out = model(**batch, labels=labels)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert model.model.connector.mlp[0].weight.grad.abs().sum() > 0

    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path)
    again = AutoProcessor.from_pretrained(tmp_path)
    assert again.image_token_id == model.config.image_token_id
    with torch.no_grad():
        batch = processor.apply_chat_template(
            _chat(),
            images=[[Image.new("RGB", (40, 30), "red")]],
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
        )
        assert torch.equal(model.eval()(**batch).logits, reloaded.eval()(**batch).logits)


def test_processor_from_a_tokenizer_without_the_image_token_says_how_to_fix_it(parts):
    model = TinyLMMForConditionalGeneration.from_components(parts / "vision", parts / "llm")
    with pytest.raises(ValueError, match=r"trainers\.build\.compose"):
        TinyLMMProcessor.from_config(model.config, tokenizer=_tokenizer())


def test_normalisation_comes_from_the_vision_checkpoint_when_it_has_one(parts, tmp_path):
    _, processor = compose(parts / "vision", parts / "llm")
    assert processor.image_processor.image_mean == list(BACKBONES["clip_vision_model"][2][0])
    own = tmp_path / "vision"
    AutoModel.from_pretrained(parts / "vision").save_pretrained(own)
    CLIPImageProcessor(image_mean=[0.1, 0.2, 0.3], image_std=[0.4, 0.5, 0.6]).save_pretrained(own)
    _, processor = compose(own, parts / "llm")
    assert processor.image_processor.image_mean == [0.1, 0.2, 0.3]
    assert processor.image_processor.image_std == [0.4, 0.5, 0.6]


# DeiT, DINOv2 and ConvNeXt checkpoints publish ImageNet's statistics in their preprocessor configs, which
# their image processor classes do not default to; `compose` reads a checkpoint's own config when it has one.
@pytest.mark.parametrize("model_type", ["clip_vision_model", "siglip_vision_model", "vit"])
def test_backbone_table_normalisation_agrees_with_transformers_image_processors(model_type):
    """The table holds what each backbone's own image processor uses (its class defaults here)."""
    names = IMAGE_PROCESSOR_MAPPING_NAMES[model_type.removesuffix("_vision_model")]
    name = names[0] if isinstance(names, tuple) else names
    if isinstance(name, dict):
        name = next(iter(name.values()))
    defaults = getattr(transformers, name)()
    mean, std = BACKBONES[model_type][2]
    assert tuple(defaults.image_mean) == pytest.approx(mean)
    assert tuple(defaults.image_std) == pytest.approx(std)


def test_a_whole_vision_language_model_is_not_taken_for_a_part(parts, tmp_path):
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    llava = LlavaForConditionalGeneration(
        LlavaConfig(vision_config=vision_config("clip").to_dict(), text_config=text_config("llama").to_dict())
    )
    llava.save_pretrained(tmp_path / "llava")
    with pytest.raises(
        ValueError, match=r"vision_model .* is a whole vision-language model \(llava\).*tinylmm convert"
    ):
        compose(tmp_path / "llava", parts / "llm")
