"""What a new user meets in a first hour of `build` and `train`: which chat template build chose, a summary
before training, bf16 recipes on a machine without a GPU, a --data_path override whose images are looked up
in the recipe's folder, model cards in every saved folder, LoRA checkpoints that load from anywhere, and a
token count that goes on across a resume."""

import json
import logging
import re
import textwrap

import torch
from _processor_fixtures import make_tokenizer, rgb
from _train_fixtures import (
    caption_rows,
    cpu_config,
    model_and_processor,
    one_thread,  # noqa: F401  (autouse fixture)
    write_images,
    write_json,
)
from conftest import text_config, vision_config
from isolated import run_isolated
from transformers import AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText

from trainers import cli
from trainers.arguments import RecipeArguments
from trainers.chat import ChatEngine, Conversation, GenerationSettings
from trainers.data import load_training_data
from trainers.trainer import TinyLMMTrainer


def _build(tmp_path) -> str:
    torch.manual_seed(0)
    AutoModel.from_config(vision_config("clip")).save_pretrained(tmp_path / "vision")
    AutoModelForCausalLM.from_config(text_config("llama")).save_pretrained(tmp_path / "llm")
    make_tokenizer("chatml").save_pretrained(tmp_path / "llm")
    out = tmp_path / "build"
    argv = ["build", "--vision_model", str(tmp_path / "vision"), "--text_model", str(tmp_path / "llm")]
    assert cli.main([*argv, "--output_dir", str(out)]) == 0
    return str(out)


def _recipe(tmp_path, start: str) -> str:
    """A bf16 recipe as the packaged ones are: it neither turns bf16 off nor says use_cpu."""
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
            image_folder: {tmp_path / "images"}
            chat_template: plain
            train_modules: [connector]
            learning_rate: 1.0e-3
            per_device_train_batch_size: 2
            max_steps: 2
            bf16: true
            report_to: none
            save_strategy: steps
            save_steps: 1
            disable_tqdm: true
            """
        )
    )
    return str(recipe)


def test_a_recipe_stage_from_build_to_model_cards(tmp_path, caplog, monkeypatch):
    caplog.set_level(logging.INFO)
    start = _build(tmp_path)
    assert "chat template chatml (picked from the LLM tokenizer's turn tokens" in caplog.text

    # No GPU with bf16 (as on any CPU machine): the bf16 recipe trains in fp32 and says so.
    monkeypatch.setattr("transformers.utils.is_torch_bf16_gpu_available", lambda: False)
    # New data given on the command line, its images where the recipe's image_folder is not.
    other = tmp_path / "other"
    write_images(other, 4)
    new_data = write_json(other / "captions.json", caption_rows([f"img{i}.png" for i in range(4)]))
    caplog.clear()
    assert cli.main(["train", "--config", _recipe(tmp_path, start), "--data_path", new_data]) == 0
    log = caplog.text
    assert "training in fp32 instead" in log and "the recipe's bf16: true" in log
    out = tmp_path / "align"
    assert torch.load(out / "training_args.bin", weights_only=False).bf16 is False
    override = next(
        r.getMessage() for r in caplog.records if "replaces the recipe's data_path" in r.getMessage()
    )
    assert new_data in override and str(tmp_path / "images") in override and "--image_folder" in override

    # The summary train opens with.
    summary = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("stage base/align"))
    assert re.search(r"vision encoder\s+clip_vision_model .* none trainable", summary)
    assert re.search(r"connector\s+mlp2x_gelu .* 2\.\d+ K trainable", summary)
    assert "learning rate 0.001" in summary and "data: 4 samples from" in summary
    assert "chat template plain; max length 1024" in summary

    # Model cards: the build, each checkpoint and the final folder; the stages with their data and steps.
    assert "composed by `tinylmm build`" in (tmp_path / "build" / "README.md").read_text()
    for folder, steps in ((out / "checkpoint-1", 1), (out / "checkpoint-2", 2), (out, 2)):
        card = (folder / "README.md").read_text()
        assert "fine-tuned version of" not in card and 'pipeline("text-generation")' not in card
        assert "| vision encoder | `clip_vision_model`" in card and "| `" + str(tmp_path / "vision") in card
        row = next(line for line in card.splitlines() if line.startswith("| 1 | base/align |"))
        assert new_data in row and f"| {steps} (" in row and "| connector | 0.001 |" in row
        assert f'from_pretrained("{folder}"' in card

    # The card's example runs as written, where tinylmm is not installed (the folder ships its code).
    code = re.search(r"```python\n(.*?)```", (out / "README.md").read_text(), re.S).group(1)
    rgb(40, 30).save(tmp_path / "photo.jpg")
    printed = run_isolated(
        code + "\nprint('the example ran')", cwd=tmp_path, modules_cache=tmp_path / "modules"
    )
    assert printed.splitlines()[-1] == "the example ran"


def _lora_trainer(folder, output_dir, **overrides):
    model = AutoModelForImageTextToText.from_pretrained(folder)
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(folder)
    names = write_images(output_dir.parent / "images", 4)
    dataset, _ = load_training_data(write_json(output_dir.parent / "images" / "d.json", caption_rows(names)))
    recipe = RecipeArguments(
        recipe="t", stage="lora", train_modules=["connector"], use_lora=True, lora_r=4, lora_alpha=8
    )
    args = cpu_config(output_dir, **overrides)
    return TinyLMMTrainer(model, args=args, train_dataset=dataset, processing_class=processor, recipe=recipe)


def test_lora_checkpoint_loads_from_any_working_directory(tmp_path, monkeypatch):
    model, processor = model_and_processor("chatml")
    model.save_pretrained(tmp_path / "build")
    processor.save_pretrained(tmp_path / "build")
    monkeypatch.chdir(tmp_path)  # the stage starts from a relative path, as recipes give it
    trainer = _lora_trainer("build", tmp_path / "run", max_steps=1, save_strategy="steps", save_steps=1)
    trainer.train()
    checkpoint = tmp_path / "run" / "checkpoint-1"
    base = json.loads((checkpoint / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert base == str(tmp_path / "build")
    assert "LoRA adapters" in (checkpoint / "README.md").read_text()

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    engine = ChatEngine.load(checkpoint, device="cpu")
    assert any("lora_" in name for name, _ in engine.model.named_parameters())
    conversation = Conversation()
    conversation.add_user("what is in this image ?", [rgb(40, 30)])
    trained = trainer.model.eval()
    inputs = engine.inputs(conversation)
    with torch.no_grad():
        assert torch.allclose(engine.model(**inputs).logits, trained(**inputs).logits, atol=1e-5)
    assert isinstance(engine.reply(conversation, GenerationSettings(max_new_tokens=3)), str)


def test_logged_token_count_goes_on_across_a_resume(tmp_path):
    model, processor = model_and_processor("chatml")
    model.save_pretrained(tmp_path / "build")
    processor.save_pretrained(tmp_path / "build")

    def run(output_dir, resume=None):
        trainer = _lora_trainer(
            str(tmp_path / "build"), output_dir, max_steps=4, save_strategy="steps", save_steps=2
        )
        trainer.train(resume_from_checkpoint=resume)
        return {e["step"]: e["num_tokens"] for e in trainer.state.log_history if "num_tokens" in e}

    whole = run(tmp_path / "whole")
    resumed = run(tmp_path / "parts", resume=str(tmp_path / "whole" / "checkpoint-2"))
    assert sorted(whole) == [1, 2, 3, 4] and sorted(resumed) == [1, 2, 3, 4]  # 1, 2 from the checkpoint's log
    assert resumed[3] == whole[3] and resumed[4] == whole[4] > whole[2] > 0
