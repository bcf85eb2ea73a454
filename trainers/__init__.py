"""Everything that is not needed to load and run a model, on TRL.

Training (flat here): data, collator, sampler, plan (what a stage trains), stages (which checkpoint a stage
starts from), trainer, build and train (the `build` / `train` commands), recipes/ (the packaged YAML
recipes). evaluation/: benchmark files, batched generation, scoring, metrics. demo/: the synthetic world
and the demo pipeline. cli: the `tinylmm` dispatcher.

Importing it registers the tinylmm model and processor with the Auto classes.
"""

import modeling_tinylmm  # noqa: F401
import processors  # noqa: F401
