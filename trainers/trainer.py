"""TinyLMMTrainer: TRL's SFTTrainer with what multimodal recipes need and TRL leaves to the user.

- the recipe: which modules train (the rest frozen, a frozen vision tower run without autograd), per-module
  learning rates as optimizer parameter groups, LoRA on chosen modules with the others fully trained;
- our collator (lazy images, assistant-only labels, no cut through image tokens) and a dataset that is
  passed through untouched (TRL's preparation would tokenise it without images);
- DDP without `find_unused_parameters` (TRL turns it on for every VLM): a batch without images touches the
  trainable visual parameters with a zero term instead;
- modality-length grouped batches; counts of dropped / skipped samples in the logs and final metrics.
"""

from __future__ import annotations

import logging
from collections import Counter

import datasets
import torch
from transformers import PreTrainedModel, TrainerCallback
from trl import SFTConfig, SFTTrainer

from .arguments import RecipeArguments
from .collator import DROPPED_KEY, SKIPPED_KEY, TinyLMMCollator
from .plan import ModulePlan
from .sampler import ModalityLengthGroupedSampler, modality_lengths
from .stages import write_stage

logger = logging.getLogger(__name__)

_SIGNATURE_COLUMNS = ["messages", "conversations", "images", "image", "videos", "video", "sample_index"]


class _StageRecordCallback(TrainerCallback):
    """Write the stage record into every checkpoint folder, so a later stage can start from any of them."""

    def __init__(self, recipe: RecipeArguments):
        self.recipe = recipe

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = f"{args.output_dir}/checkpoint-{state.global_step}"
            write_stage(folder, self.recipe.record())


class TinyLMMTrainer(SFTTrainer):
    """SFTTrainer for tinylmm models. Takes a model instance (load it with
    `AutoModelForImageTextToText.from_pretrained`), its `TinyLMMProcessor` as `processing_class`, a dataset
    of common rows (see trainers/data.py) and a recipe; everything else is TRL's `SFTConfig`."""

    def __init__(
        self,
        model: PreTrainedModel,
        args: SFTConfig | None = None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        data_collator=None,
        recipe: RecipeArguments | None = None,
        group_by_modality_length: bool = False,
        **kwargs,
    ):
        if isinstance(model, str):
            raise TypeError(
                "TinyLMMTrainer takes a model instance; load it with AutoModelForImageTextToText."
            )
        if processing_class is None:
            raise ValueError("TinyLMMTrainer needs the model's processor as processing_class.")
        args = args or SFTConfig(output_dir="tinylmm-sft")
        self.recipe = recipe = recipe or RecipeArguments()
        # Our collator reads the rows as they are; TRL's preparation would tokenise them without images.
        args.dataset_kwargs = {**(args.dataset_kwargs or {}), "skip_prepare_dataset": True}
        if args.ddp_find_unused_parameters is None:
            args.ddp_find_unused_parameters = False
        self.plan = ModulePlan(model, recipe.train_modules, recipe.module_lrs)
        peft_config = kwargs.pop("peft_config", None) or self.plan.lora_config(model, recipe)
        if peft_config is None:
            self.plan.apply(model)
        if data_collator is None:
            data_collator = TinyLMMCollator(
                processing_class, max_length=args.max_length, pad_to_multiple_of=args.pad_to_multiple_of
            )
        self.group_by_modality_length = group_by_modality_length
        self.data_stats = Counter({DROPPED_KEY: 0, SKIPPED_KEY: 0})
        callbacks = [*(kwargs.pop("callbacks", None) or []), _StageRecordCallback(recipe)]
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            peft_config=peft_config,
            callbacks=callbacks,
            **kwargs,
        )
        if peft_config is not None:
            self.plan.apply_after_lora(self.model)
        self._visual_params = [
            p for n, p in self.model.named_parameters() if p.requires_grad and self.plan.is_visual(n)
        ]

    # -- data ----------------------------------------------------------------------------------------

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = list(_SIGNATURE_COLUMNS)

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.group_by_modality_length and isinstance(dataset, datasets.Dataset):
            return ModalityLengthGroupedSampler(
                modality_lengths(dataset),
                megabatch=self.args.train_batch_size * self.args.world_size,
                seed=self.args.data_seed if self.args.data_seed is not None else self.args.seed,
            )
        return super()._get_train_sampler(train_dataset)

    # -- optimisation --------------------------------------------------------------------------------

    def create_optimizer(self, model=None):
        if self.optimizer is not None:
            return self.optimizer
        opt_model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(opt_model))
        groups: dict[tuple[float, float], list] = {}
        for name, param in opt_model.named_parameters():
            if param.requires_grad:
                key = (
                    self.plan.lr(name, self.args.learning_rate),
                    self.args.weight_decay if name in decay else 0.0,
                )
                groups.setdefault(key, []).append((name, param))
        param_groups = [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()]
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        if "params" in optimizer_kwargs or "model" in optimizer_kwargs:
            raise ValueError(
                f"optim={self.args.optim!r} builds its own parameter groups; recipes need one that does not."
            )
        self.optimizer = optimizer_cls(param_groups, **optimizer_kwargs)
        for (lr, _), ps in groups.items():
            logger.info("optimizer group: lr %g, %d tensors", lr, len(ps))
        return self.optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        counts = torch.tensor(
            [inputs.pop(DROPPED_KEY, 0), inputs.pop(SKIPPED_KEY, 0)], device=self.accelerator.device
        )
        if self.accelerator.num_processes > 1:
            counts = self.accelerator.reduce(counts, reduction="sum")
        self.data_stats[DROPPED_KEY] += int(counts[0])
        self.data_stats[SKIPPED_KEY] += int(counts[1])
        result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if (
            model.training
            and "pixel_values" not in inputs
            and self._visual_params
            and not (self.is_fsdp_enabled or self.is_deepspeed_enabled)
        ):
            # No image in this batch: every trainable visual parameter still gets a (zero) gradient, so
            # DDP without find_unused_parameters sees all of them used.
            zero = sum(p.reshape(-1)[0] for p in self._visual_params) * 0.0
            result = (result[0] + zero, result[1]) if return_outputs else result + zero
        return result

    # -- reporting -----------------------------------------------------------------------------------

    def data_report(self) -> dict[str, int]:
        return {
            "dropped_too_long": self.data_stats[DROPPED_KEY],
            "skipped_missing_images": self.data_stats[SKIPPED_KEY],
        }

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        logs.update(self.data_report())
        super().log(logs, start_time)

    def train(self, *args, **kwargs):
        output = super().train(*args, **kwargs)
        report = self.data_report()
        if any(report.values()):
            logger.warning(
                "%d sample(s) dropped for exceeding max_length, %d skipped for missing image files.",
                report["dropped_too_long"],
                report["skipped_missing_images"],
            )
        output.metrics.update(report)
        return output

    def save_final(self, output_dir: str | None = None, merge_lora: bool = True) -> str:
        """Save the trained model (LoRA merged into plain weights unless told otherwise), its processor and
        the stage record; returns the folder."""
        output_dir = output_dir or self.args.output_dir
        if hasattr(self.model, "merge_and_unload") and merge_lora:
            merged = self.model.merge_and_unload()
            if self.is_world_process_zero():
                merged.save_pretrained(output_dir)
                self.processing_class.save_pretrained(output_dir)
        else:
            self.save_model(output_dir)  # gathers sharded (FSDP / ZeRO-3) weights; model, processor, args
        if self.is_world_process_zero():
            write_stage(output_dir, self.recipe.record())
        self.accelerator.wait_for_everyone()
        return output_dir
