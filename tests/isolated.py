"""Run Python code in a separate process where the tinylmm packages cannot be imported.

The project is installed (editable) on the test machine, so a plain subprocess would still find it; a
meta-path blocker makes `import modeling_tinylmm` (and `processors`, `trainers`) fail there, as on a
machine where only transformers is installed.
"""

import os
import subprocess
import sys
import textwrap

BLOCKER = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"modeling_tinylmm", "processors", "trainers"}:
            raise ModuleNotFoundError(f"No module named {name!r}")
sys.meta_path.insert(0, _Block())
try:
    import modeling_tinylmm  # noqa: F401
except ModuleNotFoundError:
    pass
else:
    raise SystemExit("tinylmm is importable: the isolation failed")
import torch
torch.set_num_threads(1)  # as tests/conftest.py: bit-exact comparisons need the same reduction order
"""


def run_isolated(code: str, cwd, modules_cache, python: str | None = None) -> str:
    """Run `code` with cwd=`cwd` and a fresh HF modules cache; return stdout, raise with stderr on failure.
    `python`: another environment's interpreter (default: this one)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(modules_cache), TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(
        [python or sys.executable, "-I", "-c", BLOCKER + textwrap.dedent(code)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode != 0:
        raise AssertionError(f"isolated run failed:\n{proc.stdout}\n{proc.stderr[-4000:]}")
    return proc.stdout
