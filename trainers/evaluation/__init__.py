"""Evaluation: benchmark files in their public formats (benchmarks), batched greedy generation from a
checkpoint (generation), scores with the project's `evaluate` modules (scoring, metrics/), and the
`tinylmm eval` command that runs all three (harness)."""

from .benchmarks import PROMPT_SUFFIXES, SHORT_ANSWER, TASKS, BenchmarkError, Sample, load_benchmark
from .generation import generate_answers, load_model
from .harness import evaluate_model
from .scoring import format_table, load_metric, score

__all__ = [
    "PROMPT_SUFFIXES",
    "SHORT_ANSWER",
    "TASKS",
    "BenchmarkError",
    "Sample",
    "evaluate_model",
    "format_table",
    "generate_answers",
    "load_benchmark",
    "load_metric",
    "load_model",
    "score",
]
