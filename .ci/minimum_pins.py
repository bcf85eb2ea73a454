"""Print pip pins for the declared minimum versions: each dependency in pyproject.toml with a lower bound
(`name>=X`) becomes `name==X`, so that CI's minimum environment installs exactly what the bounds claim.

    python .ci/minimum_pins.py [pyproject.toml]   ->   transformers==5.20.0 trl==1.16.0 ...
"""

import re
import sys
from pathlib import Path

import tomllib

LOWER_BOUND = re.compile(
    r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*>=\s*([^,;\s]+)\s*(?:[,;].*)?$"
)


def minimum_pins(pyproject: Path) -> list[str]:
    dependencies = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    return [f"{m[1]}=={m[2]}" for m in map(LOWER_BOUND.match, dependencies) if m]


if __name__ == "__main__":
    path = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "pyproject.toml")
    pins = minimum_pins(path)
    if not pins:
        sys.exit(f"{path} declares no lower bound (name>=X): nothing to pin.")
    print(" ".join(pins))
