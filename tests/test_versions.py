"""Which library versions larpo is tested on: constraints.txt, pyproject.toml's lower bounds, and the
version checks in front of the code that leans on a library's internals."""

import re
import sys
from pathlib import Path

import pytest

import larpo.versions
from larpo.versions import TESTED_INTERNALS, internals_tested, minor_release

ROOT = Path(__file__).parents[1]
pytestmark = pytest.mark.skipif(sys.version_info < (3, 11), reason="scripts/constraints.py reads pyproject.toml with tomllib")


@pytest.fixture(scope="module")
def constraints():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import constraints
    finally:
        sys.path.pop(0)
    return constraints


def test_minor_release_reads_major_and_minor():
    assert minor_release("5.25.0") == (5, 25) and minor_release("5.26.0.dev0") == (5, 26) and minor_release("1.16") == (1, 16)
    assert minor_release("nightly") is None and minor_release("5") is None


@pytest.mark.parametrize("seen,tested", [("5.22.2", False), ("5.23.0", True), ("5.25.0", True), ("5.26.0.dev0", False),
                                         ("6.0.0", False)])
def test_internals_count_as_tested_only_inside_their_range(monkeypatch, seen, tested):
    monkeypatch.setattr(larpo.versions, "version", lambda package: seen)
    assert TESTED_INTERNALS["transformers"] == ((5, 23), (5, 25))
    assert internals_tested("transformers") is tested


def test_the_pinned_versions_are_ones_whose_internals_were_tested(constraints):
    """Moving constraints.txt to a new release of transformers or accelerate needs the fast paths checked on
    it first (tests/test_sampling.py, tests/test_trainer.py), then its range in larpo.versions widened."""
    pins = constraints.pinned()
    for package, (first, last) in TESTED_INTERNALS.items():
        assert first <= minor_release(pins[package]) <= last, f"constraints.txt pins {package} {pins[package]}"


def test_constraints_pin_no_torch_build(constraints):
    assert not [name for name in constraints.pinned() if constraints.NOT_PINNED.match(f"{name}==")]


def release(text: str) -> tuple[int, ...]:
    """``"1.16"`` and ``"1.16.0"`` alike: the version's numbers without trailing zeros."""
    parts = [int(x) for x in text.split(".")]
    while parts and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def test_every_lower_bound_is_a_version_the_suite_runs_on(constraints):
    """scripts/test-lowest.sh installs the lower bounds of the dependencies and of LOWEST_EXTRAS; every other
    extra's lower bound is the version constraints.txt pins, and torch's the CPU build install.sh installs or an older
    release on which docs/performance.md records a GPU run of the suite."""
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    pins = constraints.pinned()
    torch_pin = re.search(r"pip install -q torch==(\S+)", (ROOT / "scripts" / "install.sh").read_text()).group(1)
    torch_bound = constraints.lower_bounds()["torch"]  # the CPU build CI runs, or an older one a GPU run recorded
    assert release(torch_bound) == release(torch_pin) or f"torch {torch_bound}" in (ROOT / "docs" / "performance.md").read_text()
    for extra, requirements in extras.items():
        for requirement in requirements if extra not in constraints.LOWEST_EXTRAS else ():
            if requirement.startswith("larpo["):  # another extra's
                continue
            name, bound = re.fullmatch(r"([A-Za-z0-9_.-]+)>=(\S+)", requirement).groups()
            assert release(pins[name.lower()]) == release(bound), f"{extra}: {requirement}, constraints.txt pins {pins[name.lower()]}"
