"""Training options that transformers renamed (`gradient_checkpointing` became `activation_checkpointing` in
5.24, the old name deprecated): recipes and command lines use the new name on every supported release, the
old one still works, and nothing of ours makes the installed transformers warn."""

import warnings

import pytest
import yaml

from trainers.arguments import training_field, training_fields
from trainers.recipes import available, recipe_path
from trainers.train import parse


def _checkpointing(args) -> bool:
    return getattr(args, training_field("activation_checkpointing"))


def _parse_quietly(argv: list[str]):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        args = parse(argv)[-1]
    renamed = [str(w.message) for w in caught if "checkpointing" in str(w.message)]
    assert renamed == [], renamed
    return args


@pytest.mark.parametrize("name", available())
def test_packaged_recipes_turn_on_activation_checkpointing_without_a_deprecation(name):
    recipe = yaml.safe_load(recipe_path(name).read_text())
    assert recipe.get("activation_checkpointing") is True and "gradient_checkpointing" not in recipe
    args = _parse_quietly(["--config", name, "--bf16", "false", "--report_to", "none"])
    assert _checkpointing(args) is True


@pytest.mark.parametrize(
    ("in_yaml", "on_command_line", "expected"),
    [
        ({}, [], True),  # TRL's default, under whichever name the installed release has
        ({"activation_checkpointing": False}, [], False),
        ({"gradient_checkpointing": False}, [], False),
        ({"activation_checkpointing": True}, ["--gradient_checkpointing", "false"], False),
        ({"gradient_checkpointing": True}, ["--activation_checkpointing", "false"], False),
        ({"activation_checkpointing": False}, ["--no_gradient_checkpointing"], False),
        ({"activation_checkpointing": False}, ["--activation_checkpointing"], True),
    ],
)
def test_either_name_sets_the_one_option_and_the_command_line_wins(
    tmp_path, in_yaml, on_command_line, expected
):
    config = tmp_path / "stage.yaml"
    config.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "out"), "bf16": False, **in_yaml}))
    args = _parse_quietly(["--config", str(config), *on_command_line])
    assert _checkpointing(args) is expected
    assert args.gradient_checkpointing is expected  # what TRL and transformers read internally


def test_the_kwargs_follow_the_same_rename(tmp_path):
    config = tmp_path / "stage.yaml"
    config.write_text(f"output_dir: {tmp_path / 'out'}\nbf16: false\n")
    args = _parse_quietly(
        ["--config", str(config), "--activation_checkpointing_kwargs", '{"use_reentrant": true}']
    )
    assert getattr(args, training_field("activation_checkpointing_kwargs")) == {"use_reentrant": True}


def test_both_names_at_once_are_an_error(tmp_path):
    config = tmp_path / "stage.yaml"
    config.write_text(
        f"output_dir: {tmp_path / 'out'}\nactivation_checkpointing: true\ngradient_checkpointing: false\n"
    )
    with pytest.raises(
        ValueError, match="activation_checkpointing and gradient_checkpointing are one option"
    ):
        parse(["--config", str(config), "--bf16", "false"])
    with pytest.raises(ValueError, match="give it once, as activation_checkpointing"):
        training_fields({"activation_checkpointing": True, "gradient_checkpointing": True})
