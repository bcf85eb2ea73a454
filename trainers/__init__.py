"""tinylmm training on TRL: data, collator, recipes, the trainer and the `tinylmm` command.

Importing it registers the tinylmm model and processor with the Auto classes.
"""

import modeling_tinylmm  # noqa: F401
import processors  # noqa: F401
