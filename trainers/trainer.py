"""TinyLMMTrainer: TRL's SFTTrainer with what multimodal recipes need and TRL leaves to the user.

- the recipe: which modules train (the rest frozen, a frozen vision tower run without autograd), per-module
  learning rates as optimizer parameter groups, LoRA on chosen modules with the others fully trained;
- our collator (lazy images, assistant-only labels, no cut through image tokens) and a dataset that is
  passed through untouched (TRL's preparation would tokenise it without images);
- DDP without `find_unused_parameters` (TRL turns it on for every VLM): a batch without images touches the
  trainable visual parameters with a zero term instead; under FSDP / ZeRO-3 the tower runs on a blank crop
  in such a batch, so that every process gathers the same vision blocks in every step;
- modality-length grouped batches; counts of dropped / skipped samples in the logs and final metrics, and an
  error (nothing saved) when no sample can be trained on;
- chats rendered and tokenised once, before training (the collator's `encode`, mapped over the datasets);
- TRL's `packing` option carried out by our collator (samples with their images packed into rows, attention
  kept inside each sample); TRL itself refuses packing for vision data. The log shows `packing_efficiency`;
- the loss computed on the supervised positions only, in chunks (trainers/loss.py), with TRL's metrics
  (entropy, mean_token_accuracy) on those positions;
- checkpoints written whole or not at all, resumed only when complete, into a folder checked for writing
  before training starts (trainers/checkpoint.py).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections import Counter

import datasets
import torch
from transformers import PreTrainedModel
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint, rotate_checkpoints
from trl import SFTConfig, SFTTrainer

from .arguments import RecipeArguments
from .checkpoint import (
    TRAINER_STATE,
    check_resumable,
    check_writable,
    publish,
    remove_incomplete,
    resolve_resume,
    set_generation_config,
    staging_folder,
)
from .collator import DROPPED_KEY, ENCODED_COLUMNS, IGNORE_INDEX, SKIPPED_KEY, TOKENS_KEY, TinyLMMCollator
from .loss import add_supervised_loss
from .model_card import chat_template_name, human_count, model_parts, write_model_card
from .plan import ModulePlan
from .sampler import ModalityLengthGroupedSampler, modality_lengths
from .stages import tokens_trained, trained_record, write_stage

logger = logging.getLogger(__name__)

_SIGNATURE_COLUMNS = [
    "messages",
    "conversations",
    "images",
    "image",
    "videos",
    "video",
    "sample_index",
    *ENCODED_COLUMNS,
]
TRAINED_KEY = "trained"  # samples (rows) with at least one supervised token
# When this many samples were read and every one was dropped or skipped, training stops: the data or the
# settings are wrong (max_length, image_folder), and waiting for the end of the run would only lose time.
EMPTY_START_LIMIT = 100


def _zero_stage(trainer) -> int | None:
    plugin = (
        getattr(trainer.accelerator.state, "deepspeed_plugin", None) if trainer.is_deepspeed_enabled else None
    )
    return plugin.zero_stage if plugin is not None else None


class NoTrainingDataError(RuntimeError):
    """Every sample read was dropped or skipped: nothing to learn from, nothing saved."""


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
        data_source: dict | None = None,
        **kwargs,
    ):
        """`data_source`: where the training data came from (data_path, image_folder …), for the stage
        record and the model card of every saved folder."""
        if isinstance(model, str):
            raise TypeError(
                "TinyLMMTrainer takes a model instance; load it with AutoModelForImageTextToText."
            )
        if processing_class is None:
            raise ValueError("TinyLMMTrainer needs the model's processor as processing_class.")
        args = args or SFTConfig(output_dir="tinylmm-sft")
        self.recipe = recipe = recipe or RecipeArguments()
        self.data_source = dict(data_source or {})
        if train_dataset is not None and hasattr(train_dataset, "__len__"):
            self.data_source.setdefault("samples", len(train_dataset))
        # The starting folder, absolute: LoRA checkpoints record it as their base model, and they must load
        # from any working directory.
        start = getattr(model, "name_or_path", None)
        if start and os.path.isdir(start) and not os.path.isabs(start):
            model.name_or_path = model.config.name_or_path = start = os.path.abspath(start)
        self.start = start or None
        # Our collator reads the rows as they are; TRL's preparation would tokenise them without images.
        args.dataset_kwargs = {**(args.dataset_kwargs or {}), "skip_prepare_dataset": True}
        if args.ddp_find_unused_parameters is None:
            args.ddp_find_unused_parameters = False
        # TRL refuses packing for vision data; our collator packs (TRL's bfd never splits a sample either).
        self.packing = bool(args.packing)
        if args.padding_free:
            raise ValueError(
                "padding_free is not supported for multimodal data; set packing: true, which packs each batch's "
                "samples into rows of at most max_length tokens with attention kept inside each sample."
            )
        if self.packing and args.packing_strategy not in ("bfd", "bfd_split"):
            raise ValueError(
                f"packing_strategy={args.packing_strategy!r}: multimodal samples are packed whole (bfd); a "
                "sample cut in two would separate its image tokens from its text."
            )
        args.packing = False
        self.plan = ModulePlan(model, recipe.train_modules, recipe.module_lrs)
        peft_config = kwargs.pop("peft_config", None) or self.plan.lora_config(model, recipe)
        if peft_config is None:
            self.plan.apply(model)
        if data_collator is None:
            data_collator = TinyLMMCollator(
                processing_class, max_length=args.max_length, pad_to_multiple_of=args.pad_to_multiple_of
            )
        if isinstance(data_collator, TinyLMMCollator):
            data_collator.packing = data_collator.packing or self.packing
            with args.main_process_first(desc="tokenising chats"):  # one process writes the cache
                train_dataset = data_collator.encode_dataset(train_dataset, args.dataset_num_proc)
                if isinstance(eval_dataset, dict):
                    eval_dataset = {
                        k: data_collator.encode_dataset(d, args.dataset_num_proc)
                        for k, d in eval_dataset.items()
                    }
                elif eval_dataset is not None:
                    eval_dataset = data_collator.encode_dataset(eval_dataset, args.dataset_num_proc)
        elif self.packing:
            raise ValueError("packing is done by TinyLMMCollator; pass one (or no data_collator).")
        self._token_counts = [0, 0]  # real tokens, tensor slots (for the packing efficiency)
        self.group_by_modality_length = group_by_modality_length
        self.data_stats = Counter({DROPPED_KEY: 0, SKIPPED_KEY: 0, TRAINED_KEY: 0})
        self._staging: str | None = None
        self._labelled_batches = 0  # training batches whose labels were counted
        # Every folder saved from here on (checkpoints, the final one) stops generating at the end of a turn.
        set_generation_config(model, processing_class, getattr(data_collator, "chat_template", None))
        callbacks = kwargs.pop("callbacks", None)
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
        args.packing = self.packing  # as the user set it, for the saved arguments
        if peft_config is not None:
            self.plan.apply_after_lora(self.model)
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        add_supervised_loss(base)
        if self.is_fsdp_enabled or _zero_stage(self) == 3:
            base.model.vision_in_every_step = True
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

    def parameter_groups(self, model=None) -> dict[tuple[float, float], list]:
        """The trainable parameters by (learning rate, weight decay): the optimizer's groups."""
        model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(model))
        groups: dict[tuple[float, float], list] = {}
        for name, param in model.named_parameters():
            if param.requires_grad:
                key = (
                    self.plan.lr(name, self.args.learning_rate),
                    self.args.weight_decay if name in decay else 0.0,
                )
                groups.setdefault(key, []).append((name, param))
        return groups

    def create_optimizer(self, model=None):
        if self.optimizer is not None:
            return self.optimizer
        opt_model = self.model if model is None else model
        groups = self.parameter_groups(opt_model)
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
        labels = inputs.get("labels")
        trained = int((labels != IGNORE_INDEX).any(dim=-1).sum()) if labels is not None else 0
        counts = torch.tensor(
            [inputs.pop(DROPPED_KEY, 0), inputs.pop(SKIPPED_KEY, 0), trained], device=self.accelerator.device
        )
        if self.accelerator.num_processes > 1:
            counts = self.accelerator.reduce(counts, reduction="sum")
        self.data_stats[DROPPED_KEY] += int(counts[0])
        self.data_stats[SKIPPED_KEY] += int(counts[1])
        if model.training and labels is not None:
            self.data_stats[TRAINED_KEY] += int(counts[2])
            self._labelled_batches += 1
            self._check_something_trained(whole_run=False)
        real_tokens = inputs.pop(TOKENS_KEY, None)
        if model.training and real_tokens is not None:
            self._token_counts[0] += int(real_tokens)
            self._token_counts[1] += inputs["input_ids"].numel()
        if return_outputs or not self._supervised_loss_applies():
            result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        else:
            result = self._supervised_loss(model, inputs, num_items_in_batch, real_tokens)
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

    def _supervised_loss_applies(self) -> bool:
        """The supervised-positions loss stands in for TRL's own except where TRL needs full logits or more
        than the negative log-likelihood (a custom loss function, label smoothing, DFT, MoE auxiliary loss)."""
        return (
            self.compute_loss_func is None
            and self.label_smoother is None
            and self.args.loss_type == "nll"
            and not self.aux_loss_enabled
        )

    def _supervised_loss(self, model, inputs, num_items_in_batch, real_tokens) -> torch.Tensor:
        """TRL's loss and metrics (mean over supervised tokens, `num_items_in_batch` across accumulation steps
        and devices), from the supervised positions only."""
        mode = "train" if self.model.training else "eval"
        outputs = model(**inputs, use_cache=False, supervised_loss=True)
        denominator = outputs.num_tokens if num_items_in_batch is None else num_items_in_batch
        loss = outputs.loss / torch.as_tensor(denominator).clamp(min=1)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())
        gather = self.accelerator.gather_for_metrics
        num_valid = gather(outputs.num_tokens.detach()).sum()
        if outputs.entropy is not None:
            entropy = gather(outputs.entropy.detach()).sum()
            correct = gather(outputs.num_correct.detach()).sum()
            self._metrics[mode]["entropy"].append((entropy / num_valid).item() if num_valid > 0 else 0.0)
            self._metrics[mode]["mean_token_accuracy"].append(
                (correct / num_valid).item() if num_valid > 0 else 0.0
            )
        if mode == "train":
            if real_tokens is None:
                mask = inputs.get("attention_mask")
                real_tokens = int(mask.sum()) if mask is not None else inputs["input_ids"].numel()
            local = torch.tensor(real_tokens, device=self.accelerator.device)
            self._total_train_tokens += gather(local).sum().item() // self._tp_size
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        return loss

    # -- reporting -----------------------------------------------------------------------------------

    def data_report(self) -> dict[str, int]:
        return {
            "dropped_too_long": self.data_stats[DROPPED_KEY],
            "skipped_missing_images": self.data_stats[SKIPPED_KEY],
        }

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        logs.update(self.data_report())
        if self.packing and self._token_counts[1]:
            logs["packing_efficiency"] = self._token_counts[0] / self._token_counts[1]
            self._token_counts = [0, 0]
        super().log(logs, start_time)

    def _check_something_trained(self, whole_run: bool, read: str = "in the whole run") -> None:
        """Raise NoTrainingDataError when no sample read so far had a token to learn from. `whole_run`: every
        batch so far counts (at the end, or before a checkpoint is written); else only once
        EMPTY_START_LIMIT samples were read."""
        dropped, skipped = self.data_stats[DROPPED_KEY], self.data_stats[SKIPPED_KEY]
        if self.data_stats[TRAINED_KEY]:
            return
        if whole_run and not (dropped + skipped or self._labelled_batches):
            return  # no batch ran (resumed at the last step) or none could be counted (no labels)
        if not whole_run and dropped + skipped < EMPTY_START_LIMIT:
            return
        if not whole_run:
            read = f"in the first {dropped + skipped} samples read"
        if dropped + skipped:
            reason = (
                f"{dropped} dropped for exceeding max_length={self.args.max_length} and {skipped} skipped "
                "for missing image files (a sample counts once per epoch it is read in). Raise max_length, "
                "check image_folder / the image paths, or fix the data"
            )
        else:
            reason = "no batch had a supervised token (an assistant turn to learn from). Check the data"
        raise NoTrainingDataError(
            f"no sample could be trained on {read}: {reason}; nothing was saved for this stage."
        )

    def train(self, resume_from_checkpoint: str | bool | None = None, *args, **kwargs):
        """Trainer.train, after checking that output_dir is writable and that the checkpoint to resume from
        (True / "true": the newest in output_dir) is complete; raises NoTrainingDataError when no sample could
        be trained on."""
        check_writable(self.args.output_dir)
        resume_from_checkpoint = resolve_resume(resume_from_checkpoint, self.args.output_dir)
        if resume_from_checkpoint is not None:
            check_resumable(resume_from_checkpoint, deepspeed=self.is_deepspeed_enabled)
        if self.args.should_save:
            remove_incomplete(self.args.output_dir)
        self.accelerator.wait_for_everyone()
        if resume_from_checkpoint is not None:
            # TRL counts the logged `num_tokens` from 0 in every run; a resumed run goes on from the checkpoint's.
            self._total_train_tokens = tokens_trained(resume_from_checkpoint)
        if self.is_world_process_zero():
            logger.info("%s", self.summary())
        output = super().train(resume_from_checkpoint, *args, **kwargs)
        self._check_something_trained(whole_run=True)
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
        set_generation_config(
            self.model, self.processing_class, getattr(self.data_collator, "chat_template", None)
        )
        saved = self.model
        if hasattr(self.model, "merge_and_unload") and merge_lora:
            merged = saved = self.model.merge_and_unload()
            set_generation_config(
                merged, self.processing_class, getattr(self.data_collator, "chat_template", None)
            )
            if self.is_world_process_zero():
                merged.save_pretrained(output_dir)
                self.processing_class.save_pretrained(output_dir)
        else:
            self.save_model(output_dir)  # gathers sharded (FSDP / ZeRO-3) weights; model, processor, args
        if self.is_world_process_zero():
            write_stage(output_dir, self.stage_record())
            write_model_card(output_dir, saved, self.processing_class)
        self.accelerator.wait_for_everyone()
        return output_dir

    def stage_record(self) -> dict:
        """What a folder saved now records about the stage: the recipe, the starting folder and its history,
        the data, the steps so far (trainers/stages.py)."""
        template = getattr(self.data_collator, "chat_template", None)
        data = {**self.data_source, **({"chat_template": template} if template else {})}
        record = trained_record(self.recipe.record(), self.start, data, self.state, self.args)
        record["num_tokens"] = int(getattr(self, "_total_train_tokens", 0))
        return record

    def summary(self) -> str:
        """What this stage trains, at which rates, on what: the lines `train` opens with."""
        stage = self.recipe.stage_id or "(no recipe stage)"
        lines = [f"stage {stage}, starting from {self.start or 'a model in memory'}:"]
        for p in model_parts(self.model):
            trainable = human_count(p.trainable) if p.trainable else "none"
            lines.append(
                f"  {p.label:<15} {p.kind:<22} {human_count(p.parameters):>9} parameters, {trainable} trainable"
            )
        for (lr, decay), params in self.parameter_groups().items():
            count = human_count(sum(param.numel() for _, param in params))
            lines.append(
                f"  learning rate {lr:g} (weight decay {decay:g}): {len(params)} tensors, {count} parameters"
            )
        data = self.data_source
        samples = f"{data['samples']:,} samples" if data.get("samples") is not None else "samples streamed"
        where = f" from {data['data_path']}" if data.get("data_path") else ""
        images = f" (images in {data['image_folder']})" if data.get("image_folder") else ""
        template = getattr(self.data_collator, "chat_template", None) or self.processing_class.chat_template
        lines.append(f"  data: {samples}{where}{images}")
        lines.append(
            f"  chat template {chat_template_name(template)}; max length {self.args.max_length or 'none'}; "
            f"{self.args.per_device_train_batch_size} per device x {self.args.gradient_accumulation_steps} "
            f"accumulation x {self.args.world_size} process(es) per step"
        )
        return "\n".join(lines)

    def create_model_card(self, model_name: str | None = None, dataset_name: str | None = None, **kwargs):
        """tinylmm's model card instead of TRL's text-only one (TRL writes it into output_dir with every
        checkpoint, transformers with push_to_hub): written only where a model has been saved."""
        folder = self.args.output_dir
        if not self.is_world_process_zero() or not any(
            os.path.isfile(os.path.join(folder, name)) for name in ("config.json", "adapter_config.json")
        ):
            return
        write_model_card(folder, self.model, self.processing_class)

    # -- checkpoints -----------------------------------------------------------------------------------

    def _get_output_dir(self, trial) -> str:
        # While a checkpoint is being saved, transformers writes it under its staging folder.
        return self._staging or super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        """transformers' checkpoint, written into tmp-checkpoint-N/ and renamed to checkpoint-N once every
        file (and every process's RNG state) is in: a kill or a full disk mid-save never leaves a
        checkpoint-N that looks complete, and the previous one stays the newest to resume from."""
        run_dir = super()._get_output_dir(trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        # A checkpoint of a model that has learned nothing would look resumable; stop before writing it.
        self._check_something_trained(
            whole_run=True, read=f"in the {self.state.global_step} steps before {name}"
        )
        staging = staging_folder(run_dir, self.state.global_step)
        staged, final = os.path.join(staging, name), os.path.join(run_dir, name)
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)  # left by an earlier interrupted save of this step
        self.accelerator.wait_for_everyone()
        self._staging = staging
        try:
            super()._save_checkpoint(model, trial)
            if self.args.should_save:
                self._complete_checkpoint(staged, final)
        except Exception as err:
            if self.args.should_save:
                shutil.rmtree(staging, ignore_errors=True)
            last = get_last_checkpoint(run_dir) if os.path.isdir(run_dir) else None
            raise RuntimeError(
                f"saving {final} failed ({type(err).__name__}: {err}); nothing was written there. The newest "
                f"complete checkpoint is {last or 'none'}."
            ) from err
        finally:
            self._staging = None
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            publish(staged, final)
            rotate_checkpoints(
                output_dir=run_dir,
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,
            )
        self.accelerator.wait_for_everyone()

    def _complete_checkpoint(self, staged: str, final: str) -> None:
        """What a checkpoint holds besides transformers' files, added before it is published: the stage
        record (a later stage can start from any checkpoint) and the generation config (also for LoRA
        checkpoints, whose save holds only the adapters); paths in the trainer state name the final folder."""
        write_stage(staged, self.stage_record())
        write_model_card(staged, self.model, self.processing_class, location=final)
        if not os.path.isfile(os.path.join(staged, "generation_config.json")):
            generation_config = getattr(self.model, "generation_config", None)
            if generation_config is not None:
                generation_config.save_pretrained(staged)
        if self.state.best_model_checkpoint == staged:
            self.state.best_model_checkpoint = final
            self.state.save_to_json(os.path.join(staged, TRAINER_STATE))
