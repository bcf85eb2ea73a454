"""The `tinylmm` command: `build` composes pretrained parts, `train` runs a recipe stage with overrides."""

import textwrap

import pytest
import torch
from _processor_fixtures import make_tokenizer
from _train_fixtures import (
    caption_rows,
    one_thread,  # noqa: F401  (autouse fixture)
    write_images,
    write_json,
)
from conftest import text_config, vision_config
from tokenizers import Tokenizer, pre_tokenizers
from tokenizers.models import WordLevel
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    PreTrainedTokenizerFast,
)

from trainers import cli
from trainers.stages import read_stage


def _tokenizer_without_image_token() -> PreTrainedTokenizerFast:
    """A word-level tokenizer that fills the tiny LLM's 96-entry vocabulary exactly, with no <image>."""
    specials = ["<pad>", "<s>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>"]
    words = "a the what is in this image describe red blue circle square user assistant . ?".split()
    vocab = specials + words
    vocab += [f"w{i}" for i in range(96 - len(vocab))]
    backend = Tokenizer(WordLevel({t: i for i, t in enumerate(vocab)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": specials[4:]})
    return tokenizer


def _components(tmp_path, tokenizer):
    torch.manual_seed(0)
    AutoModel.from_config(vision_config("clip")).save_pretrained(tmp_path / "vision")
    AutoModelForCausalLM.from_config(text_config("llama")).save_pretrained(tmp_path / "llm")
    tokenizer.save_pretrained(tmp_path / "llm")
    return str(tmp_path / "vision"), str(tmp_path / "llm")


@pytest.mark.parametrize("grows", [True, False])
def test_build_composes_encoder_connector_and_llm(tmp_path, grows):
    tokenizer = _tokenizer_without_image_token() if grows else make_tokenizer("chatml")
    vision, llm = _components(tmp_path, tokenizer)
    out = tmp_path / "build"
    argv = ["build", "--vision_model", vision, "--text_model", llm, "--output_dir", str(out)]
    assert cli.main([*argv, "--connector_type", "mlp2x_gelu", "--chat_template", "chatml"]) == 0

    model = AutoModelForImageTextToText.from_pretrained(out)
    processor = AutoProcessor.from_pretrained(out)
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    assert model.config.image_token_id == processor.image_token_id == image_id == (96 if grows else 95)
    assert model.get_input_embeddings().weight.shape[0] == (97 if grows else 96)
    assert read_stage(out) == "build"
    # The pretrained parts came in unchanged.
    llm_weights = AutoModelForCausalLM.from_pretrained(llm).model.layers[0].mlp.up_proj.weight
    assert torch.equal(model.model.language_model.layers[0].mlp.up_proj.weight, llm_weights)
    patch = AutoModel.from_pretrained(vision).embeddings.patch_embedding.weight
    assert torch.equal(model.model.vision_tower.embeddings.patch_embedding.weight, patch)
    # And the result runs on what its processor makes.
    from PIL import Image

    chat = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is in this image ?"}]},
        {"role": "assistant", "content": "a red circle ."},
    ]
    inputs = processor.apply_chat_template(
        [chat], tokenize=True, return_dict=True, images=[[Image.new("RGB", (40, 30))]], return_tensors="pt"
    )
    with torch.no_grad():
        assert model(**inputs).logits.shape[-1] == model.get_input_embeddings().weight.shape[0]


def test_train_runs_a_recipe_stage_with_command_line_overrides(tmp_path, capsys):
    vision, llm = _components(tmp_path, make_tokenizer("chatml"))
    start = tmp_path / "build"
    cli.main(["build", "--vision_model", vision, "--text_model", llm, "--output_dir", str(start)])
    names = write_images(tmp_path / "images", 4)
    write_json(tmp_path / "images" / "captions.json", caption_rows(names))
    recipe = tmp_path / "align.yaml"
    recipe.write_text(
        textwrap.dedent(
            f"""
            recipe: base
            stage: align
            init_stage: build
            model_name_or_path: {start}
            output_dir: {tmp_path / "align"}
            data_path: {tmp_path / "images" / "captions.json"}
            chat_template: plain
            train_modules: [connector]
            learning_rate: 1.0e-3
            per_device_train_batch_size: 2
            max_steps: 4
            bf16: false
            use_cpu: true
            report_to: none
            save_strategy: "no"
            disable_tqdm: true
            """
        )
    )
    assert cli.main(["train", "--config", str(recipe), "--max_steps", "2", "--learning_rate", "5e-4"]) == 0
    out = tmp_path / "align"
    args = torch.load(out / "training_args.bin", weights_only=False)
    assert (args.max_steps, args.learning_rate) == (2, 5e-4)  # the command line wins over the YAML
    assert read_stage(out) == "base/align"
    before = AutoModelForImageTextToText.from_pretrained(start).state_dict()
    after = AutoModelForImageTextToText.from_pretrained(out).state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed and all(k.startswith("model.connector.") for k in changed)

    # The next stage must start from the stage it names.
    wrong = [
        "train",
        "--config",
        str(recipe),
        "--model_name_or_path",
        str(out),
        "--output_dir",
        str(tmp_path / "x"),
    ]
    assert cli.main(wrong) == 1  # one line names the problem; the traceback only with --debug
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("tinylmm train: error:")]
    assert (
        len(lines) == 1
        and "starts from the checkpoint of stage 'build'" in lines[0]
        and "--debug" in lines[0]
    )
    assert "Traceback" not in err
    with pytest.raises(ValueError, match="starts from the checkpoint of stage 'build', but .* 'base/align'"):
        cli.main([*wrong, "--debug"])


def test_subcommands_come_from_one_table(capsys):
    for module in ("trainers.train", "trainers.build"):
        assert module in cli.COMMANDS.values()
    assert cli.main([]) == 1
    assert "train" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["build", "--no_such_option", "1"])
