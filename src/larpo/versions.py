"""Whether an installed library is a version that larpo's use of its private internals was tested with.

Two speed-ups lean on internals that a library may change in any release: sampling writes the
key/value cache in place by subclassing transformers' ``DynamicLayer``
(:class:`larpo.sampling._PreallocatedLayer`), and a training phase ends by clearing accelerate's
lists of prepared objects (:func:`larpo.trainer._release`). Each names the releases it was tested
with and, on any other release, takes the public path instead: slower, with the same results.
Widen a range only after the tests pass on the new release (``constraints.txt`` pins the releases
the suite runs on, and a test checks that they lie in these ranges).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

# package -> (first, last) major.minor releases whose internals larpo's fast paths were tested with
TESTED_INTERNALS = {
    "transformers": ((5, 23), (5, 25)),  # sampling._PreallocatedLayer: DynamicLayer's keys, values, update
    "accelerate": ((1, 1), (1, 16)),  # trainer._release: Accelerator._models, _optimizers, _schedulers, _dataloaders
}


def minor_release(text: str) -> tuple[int, int] | None:
    """(major, minor) of a version string such as ``"5.25.0"`` or ``"5.26.0.dev0"``; None if it does not start so."""
    parts = text.split(".")
    if len(parts) < 2 or not (parts[0].isdigit() and parts[1].isdigit()):
        return None
    return int(parts[0]), int(parts[1])


def internals_tested(package: str) -> bool:
    """Whether the installed ``package`` is a release in its :data:`TESTED_INTERNALS` range."""
    try:
        installed = minor_release(version(package))
    except PackageNotFoundError:
        return False
    first, last = TESTED_INTERNALS[package]
    return installed is not None and first <= installed <= last
