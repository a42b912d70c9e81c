"""The two sets of versions the test suite runs on (Python >= 3.11, for tomllib).

    python3 scripts/constraints.py freeze [VENV]   # rewrite constraints.txt from a virtual environment
                                                   #   in which the suite passes (default: .venv)
    python3 scripts/constraints.py lowest          # print pyproject.toml's lower bounds as exact pins
    python3 scripts/constraints.py lowest-extras   # the extras those include, comma-separated

``constraints.txt`` holds the exact versions the suite last passed with; ``scripts/install.sh``
installs from it. It leaves out torch and what only torch needs (a GPU machine keeps its own torch
build; a CPU machine gets ``torch==2.13.0`` from install.sh). ``lowest`` gives the versions
``scripts/test-lowest.sh`` runs the suite on: each dependency at its lower bound, torch apart, and
the extras of :data:`LOWEST_EXTRAS` likewise. The other extras' lower bounds must be the versions
constraints.txt pins (a test checks both).
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "constraints.txt"
LOWEST_EXTRAS = ("dev", "gguf", "tensorboard")  # installed at their lower bounds by scripts/test-lowest.sh
NOT_PINNED = re.compile(r"(torch|triton|nvidia-.*|cuda-.*|sympy|mpmath|networkx)==", re.IGNORECASE)  # torch's own
HEADER = """\
# The exact versions the test suite last passed with: scripts/install.sh installs these.
# Regenerate from a virtual environment in which the suite passes: python3 scripts/constraints.py freeze
# (torch and what only torch needs are left out: a GPU machine keeps its own torch build)
"""


def lower_bounds(extras: tuple[str, ...] = LOWEST_EXTRAS) -> dict[str, str]:
    """``{name: version}`` of every ``name>=version`` in pyproject.toml's dependencies and ``extras``."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [*project["dependencies"], *(r for e in extras for r in project["optional-dependencies"][e])]
    bounds = {}
    for requirement in requirements:
        match = re.match(r"\s*([A-Za-z0-9_.-]+)\s*>=\s*([^,;\s]+)", requirement)
        if match is None:
            raise SystemExit(f"pyproject.toml: {requirement!r} has no lower bound; expected name>=version")
        bounds[match.group(1).lower()] = match.group(2)
    return bounds


def pinned() -> dict[str, str]:
    """``{name: version}`` of constraints.txt."""
    lines = (line.strip() for line in CONSTRAINTS.read_text().splitlines())
    return {name.lower(): version for name, version in (line.split("==") for line in lines if line and not line.startswith("#"))}


def freeze(venv: Path) -> None:
    out = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "freeze", "--exclude-editable"],
                         check=True, capture_output=True, text=True).stdout
    pins = sorted((line for line in out.splitlines() if "==" in line and not NOT_PINNED.match(line)), key=str.lower)
    CONSTRAINTS.write_text(HEADER + "".join(f"{pin}\n" for pin in pins))
    print(f"wrote {len(pins)} versions to {CONSTRAINTS}")


def main(argv: list[str]) -> int:
    if argv[:1] == ["freeze"] and len(argv) <= 2:
        freeze(Path(argv[1]) if len(argv) == 2 else ROOT / ".venv")
    elif argv == ["lowest"]:
        print("".join(f"{name}=={version}\n" for name, version in lower_bounds().items() if name != "torch"), end="")
    elif argv == ["lowest-extras"]:
        print(",".join(LOWEST_EXTRAS))
    else:
        print("usage: python3 scripts/constraints.py freeze [VENV] | lowest | lowest-extras", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
