"""tinylmm as an lmms-eval model: `lmms-eval --model tinylmm --model_args pretrained=DIR --tasks …`.

lmms-eval finds it through the entry point `tinylmm = trainers.evaluation.lmms_eval_model:manifest` in its group
`lmms_eval.models` (pyproject.toml; `pip install tinylmm[eval]`). Its generic `huggingface` chat model does
not fit: it loads a remote-code model type through `AutoModel` (the base model, which has no LM head), passes
`audios=` to every processor and stops only at the tokenizer's EOS, not at the chat template's end of turn.
This model answers with tinylmm's own batched greedy generation (`generation.generate_answers`: the
checkpoint's chat template, left padding, the end-of-turn stop), on any checkpoint `tinylmm eval` takes.
"""

from __future__ import annotations

from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms

from .benchmarks import Sample
from .generation import generate_answers, load_model


def manifest():
    """The entry point's payload: lmms-eval's registration record for this model."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="tinylmm", simple_class_path=f"{__name__}.TinyLMMLmms")


class TinyLMMLmms(lmms):
    """lmms-eval's `simple` model interface over a checkpoint folder (tinylmm, or any image-text-to-text
    checkpoint `tinylmm eval` loads). Generation tasks only: `loglikelihood` is not implemented."""

    is_simple = True

    def __init__(
        self,
        pretrained: str,
        device: str | None = None,
        batch_size: int | str = 8,
        max_new_tokens: int = 64,
        trust_remote_code: bool = False,
        **kwargs,
    ) -> None:
        super().__init__()
        if kwargs:
            raise ValueError(f"tinylmm model: unknown model_args {sorted(kwargs)}.")
        self._model, self.processor = load_model(
            pretrained, device=device, trust_remote_code=trust_remote_code
        )
        self.batch_size_per_gpu = int(batch_size)
        self.max_new_tokens = int(max_new_tokens)

    @property
    def model(self):
        return self._model

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Greedy answers. Each request's args: (context, generation kwargs, doc_to_visual, doc_id, task,
        split); the first image of the document goes with its context, the answer is cut at any `until`."""
        groups: dict[tuple, list[int]] = {}
        for i, request in enumerate(requests):
            gen_kwargs = request.args[1]
            key = (
                int(gen_kwargs.get("max_new_tokens", self.max_new_tokens)),
                tuple(gen_kwargs.get("until") or ()),
            )
            groups.setdefault(key, []).append(i)
        answers = [""] * len(requests)
        for (max_new_tokens, until), indices in groups.items():
            samples = []
            for i in indices:
                context, _, doc_to_visual, doc_id, task, split = requests[i].args
                visuals = doc_to_visual(self.task_dict[task][split][doc_id]) if doc_to_visual else []
                image = next((v for v in visuals or [] if hasattr(v, "convert")), None)
                samples.append(Sample(id=doc_id, prompt=context, references=[], image=image))
            texts = generate_answers(
                self.model,
                self.processor,
                samples,
                prompt_suffix="",
                batch_size=self.batch_size,
                max_new_tokens=max_new_tokens,
                progress=False,
            )
            for i, text in zip(indices, texts):
                for stop in until:
                    if stop and stop in text:
                        text = text[: text.index(stop)]
                answers[i] = text
                self.cache_hook.add_partial(
                    "generate_until", (requests[i].args[0], requests[i].args[1]), text
                )
        return answers

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        raise NotImplementedError("the tinylmm lmms-eval model runs generation tasks only.")

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("the tinylmm lmms-eval model runs single-round generation tasks only.")
