"""Recipes: every YAML parses and chains, trains exactly what it names at the learning rates it names."""

import pytest
import torch
from _processor_fixtures import make_processor
from _train_fixtures import (
    caption_rows,
    cpu_config,
    one_thread,  # noqa: F401  (autouse fixture)
    write_images,
    write_json,
)
from conftest import tiny_model
from datasets import Dataset
from transformers import AutoModelForCausalLM

import trainers.train as train_module
from trainers.arguments import RecipeArguments
from trainers.data import load_training_data
from trainers.plan import ModulePlan, select_parameters
from trainers.recipes import available, recipe_path
from trainers.stages import check_architecture, check_stage, write_stage
from trainers.train import parse
from trainers.trainer import TinyLMMTrainer

NAMES = available()
RECIPES = [str(recipe_path(name)) for name in NAMES]
PINPOINTS = [[32, 32], [32, 64], [64, 32], [64, 64]]


def _recipe(name: str, *overrides: str):
    path = RECIPES[NAMES.index(name)]
    return parse(["--config", path, "--bf16", "false", "--report_to", "none", *overrides])


def _model_for(name: str):
    """A tiny model of the architecture the recipe is written for."""
    if name.startswith("convllava"):
        return tiny_model("convnext", "llama", "convnext_stage", connector_config={"depth": 1})
    if name.startswith("onevision"):
        return tiny_model(
            "siglip", "qwen2", image_aspect_ratio="anyres_max_9", image_grid_pinpoints=PINPOINTS
        )
    if name.startswith("dense_connector"):
        return tiny_model("clip", "llama", "dense_sci", vision_feature_layer=-2)
    if name.startswith("share"):  # vision blocks from 12 on must exist
        from conftest import VISION

        VISION["clip14"] = {**VISION["clip"], "num_hidden_layers": 14}
        try:
            return tiny_model("clip14", "llama")
        finally:
            del VISION["clip14"]
    return tiny_model()


def test_every_recipe_parses_and_starts_from_a_stage_that_exists():
    stages = {"build"}
    records = []
    for name in NAMES:
        _, data, recipe, args = _recipe(name)
        stages.add(recipe.stage_id)
        records.append((name, recipe, args))
        assert args.lr_scheduler_type == "cosine" and args.warmup_steps == 0.03
        assert args.weight_decay == 0.0 and args.num_train_epochs == 1
        assert recipe.train_modules and data.data_path
    for name, recipe, _ in records:
        assert recipe.init_stage in stages, f"{name} starts from unknown stage {recipe.init_stage}"
    assert {
        "base/align",
        "base/sft",
        "share/align",
        "share/sft",
        "onevision/1",
        "onevision/1.5",
        "onevision/2",
        "convllava/1",
        "convllava/2",
        "convllava/3",
        "dense_connector/align",
        "dense_connector/sft",
        "lora/sft",
        "qlora/sft",
    } <= stages


def _one_step(tmp_path, name, model, processor, **overrides):
    images = write_images(tmp_path, 2, size=(60, 30))
    dataset, _ = load_training_data(write_json(tmp_path / "d.json", caption_rows(images)))
    _, _, recipe, args = _recipe(name)
    options = {"learning_rate": args.learning_rate, "warmup_steps": 0, "max_steps": 1, **overrides}
    config = cpu_config(tmp_path / "out", **options)
    return TinyLMMTrainer(
        model, args=config, train_dataset=dataset, processing_class=processor, recipe=recipe
    )


@pytest.mark.parametrize("name", [n for n in NAMES if n != "qlora_sft"])
def test_one_step_changes_exactly_what_the_recipe_trains(tmp_path, name):
    model = _model_for(name).train()
    processor = make_processor("chatml", config=model.config)
    trainer = _one_step(tmp_path, name, model, processor)
    bare = trainer.model.get_base_model() if hasattr(trainer.model, "get_base_model") else trainer.model
    before = {n: p.detach().clone() for n, p in bare.named_parameters()}
    trainer.train()
    changed = {n for n, p in bare.named_parameters() if not torch.equal(p.detach(), before[n])}
    named = set()
    for pattern in trainer.recipe.train_modules:
        named |= set(select_parameters(bare, pattern))
    if trainer.recipe.use_lora:
        # Base weights stay; the adapters and the connector's trained copy move. LoRA's A matrices get no
        # gradient on the first step (B starts at zero), so they move from the second step on.
        trainable = {n for n, p in bare.named_parameters() if p.requires_grad}
        assert all("lora_" in n or "modules_to_save" in n for n in trainable)
        assert changed == {n for n in trainable if "lora_A" not in n}
        assert any("lora_B" in n for n in changed) and any(
            ".connector.modules_to_save." in n for n in changed
        )
    else:
        assert changed == named, sorted(changed ^ named)[:8]
        assert {n for n, p in bare.named_parameters() if p.requires_grad} == named


def test_share_trains_vision_blocks_from_12_on_only(tmp_path):
    model = _model_for("share_align")
    plan = ModulePlan(model, ["vision_tower.encoder.layers.12+"])
    layers = {int(n.split(".")[4]) for n, _ in model.named_parameters() if plan.trains(n)}
    assert layers == {12}  # the 14-block tower keeps 13 blocks (feature layer -2): 12 is the last one


def test_per_module_learning_rates_are_optimizer_groups(tmp_path):
    model = _model_for("onevision_stage1_5")
    processor = make_processor("chatml", config=model.config)
    trainer = _one_step(tmp_path, "onevision_stage1_5", model, processor)
    optimizer = trainer.create_optimizer()
    lrs = {}
    for group in optimizer.param_groups:
        for name in group["param_names"]:
            lrs[name] = group["lr"]
    vision = {n for n in lrs if n.startswith("model.vision_tower.")}
    assert vision and {lrs[n] for n in vision} == {2e-6}
    assert {lrs[n] for n in lrs if n not in vision} == {1e-5}
    assert set(lrs) == {n for n, _ in model.named_parameters()}  # stage 1.5 trains everything


def test_lora_recipe_gives_adapters_and_connector_their_rates(tmp_path):
    model = _model_for("lora_sft")
    processor = make_processor("chatml", config=model.config)
    trainer = _one_step(tmp_path, "lora_sft", model, processor)
    lrs = {n: g["lr"] for g in trainer.create_optimizer().param_groups for n in g["param_names"]}
    assert {lr for n, lr in lrs.items() if "lora_" in n} == {2e-4}
    assert {lr for n, lr in lrs.items() if ".connector." in n} == {2e-5}
    assert all(("lora_" in n) or (".connector." in n) for n in lrs)
    assert not any(".vision_tower." in n and "lora_" in n for n in lrs)  # LoRA on the LLM only


def test_lora_merges_into_a_plain_checkpoint(tmp_path):
    from transformers import AutoModelForImageTextToText

    model = _model_for("lora_sft")
    processor = make_processor("chatml", config=model.config)
    trainer = _one_step(tmp_path, "lora_sft", model, processor, max_steps=2)
    # Small adapters for speed; B starts at zero, so two steps make the adapters non-trivial.
    trainer.train()
    batch = trainer.data_collator([trainer.train_dataset[0]])
    batch = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
    trainer.model.eval()
    with torch.no_grad():
        expected = trainer.model(**batch).logits
    folder = trainer.save_final(str(tmp_path / "merged"))
    merged = AutoModelForImageTextToText.from_pretrained(folder).eval()
    assert not any("lora" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(merged(**batch).logits, expected, atol=1e-4, rtol=1e-4)


def test_frozen_vision_tower_builds_no_graph_even_with_input_grad_hooks(tmp_path):
    seen = {}

    def capture(module, args, output):
        seen["out"] = output.last_hidden_state

    for name, requires in (("base_align", False), ("share_align", True)):
        model = _model_for(name).train()
        _, _, recipe, _ = _recipe(name)
        ModulePlan(model, recipe.train_modules).apply(model)
        model.enable_input_require_grads()  # what PEFT + gradient checkpointing do
        model.model.vision_tower.register_forward_hook(capture)
        side = model.config.vision_config.image_size
        model.get_image_features(torch.randn(1, 3, side, side))
        assert seen["out"].requires_grad is requires, name


# -- bad recipes and wrong starting checkpoints ----------------------------------------------------------


def test_recipe_naming_a_missing_module_is_an_error():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"'vision_tower.encoder.layerz', which does not exist"):
        ModulePlan(model, ["vision_tower.encoder.layerz"])
    with pytest.raises(ValueError, match=r"does not exist.*model.connector"):
        ModulePlan(model, ["projector"])
    with pytest.raises(
        ValueError, match=r"selects nothing: model.vision_tower.encoder.layers holds 2 entries"
    ):
        ModulePlan(model, ["vision_tower.encoder.layers.12+"])
    with pytest.raises(
        ValueError, match="module_lrs gives 'vision_tower' a learning rate, but the recipe does not"
    ):
        ModulePlan(model, ["connector"], {"vision_tower": 1e-6})


def test_stage_from_a_checkpoint_of_another_architecture_is_an_error(tmp_path):
    clip = tiny_model()
    _, _, recipe, _ = _recipe("convllava_stage2")
    with pytest.raises(
        ValueError, match=r"expects a checkpoint with vision \['convnext\.\*'\].*clip_vision_model"
    ):
        check_architecture(clip.config, recipe.architecture, "ckpt")
    check_architecture(_model_for("convllava_stage2").config, recipe.architecture, "ckpt")

    folder = tmp_path / "align"
    clip.save_pretrained(folder)
    write_stage(folder, {"stage_id": "base/align"})
    _, _, share_sft, _ = _recipe("share_sft")
    with pytest.raises(
        ValueError, match="starts from the checkpoint of stage 'share/align', but .* 'base/align'"
    ):
        check_stage(str(folder), share_sft.init_stage)
    model_args, _, _, training_args = _recipe("convllava_stage2", "--model_name_or_path", str(folder))
    with pytest.raises(ValueError, match="expects a checkpoint with vision"):
        train_module.load_start(model_args, recipe, training_args)

    llm = tmp_path / "llm"
    AutoModelForCausalLM.from_config(clip.config.text_config).save_pretrained(llm)
    model_args, _, base, training_args = _recipe("base_sft", "--model_name_or_path", str(llm))
    with pytest.raises(ValueError, match="not a tinylmm checkpoint"):
        train_module.load_start(model_args, base, training_args)


def test_qlora_parses_and_refuses_the_cpu_clearly(monkeypatch):
    model_args, data_args, recipe, training_args = _recipe("qlora_sft")
    assert recipe.use_lora and recipe.load_in_4bit and recipe.lora_modules == ["language_model"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        train_module.train(model_args, data_args, recipe, training_args)
    with pytest.raises(ValueError, match="set use_lora"):
        RecipeArguments(load_in_4bit=True)


def test_text_only_batch_still_reaches_every_trainable_visual_parameter(tmp_path):
    """Without find_unused_parameters, DDP needs a gradient for every trainable parameter at every step."""
    model = tiny_model().train()
    processor = make_processor("chatml", config=model.config)
    rows = [
        {"messages": [{"role": "user", "content": "how many ?"}, {"role": "assistant", "content": "two"}]}
    ] * 2
    dataset = Dataset.from_list(rows)
    trainer = TinyLMMTrainer(
        model,
        args=cpu_config(tmp_path, max_steps=1),
        train_dataset=dataset,
        processing_class=processor,
        recipe=RecipeArguments(train_modules=["connector", "language_model"]),
    )
    assert trainer.args.ddp_find_unused_parameters is False
    batch = trainer.data_collator(rows)
    loss = trainer.compute_loss(model, batch)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []


def test_vision_blocks_alias_names_each_backbones_block_list():
    for vision, path in (
        ("clip", "encoder.layers"),
        ("dinov2", "encoder.layer"),
        ("convnext", "encoder.stages"),
    ):
        model = tiny_model(vision)
        alias = set(select_parameters(model, "vision_tower.blocks.1+"))
        assert alias == set(select_parameters(model, f"vision_tower.{path}.1+")), vision
        assert alias and not any(f".{path}.0." in n for n in alias)
