"""Files a run leaves: written to a temporary name and renamed into place, or appended by rows.

Every temporary file or directory is named ``.larpo-tmp-<name>.<random>`` beside its target, so
that a run resuming after a kill (and holding the run directory's lock) can remove what a killed
write left (:func:`remove_stale_temporaries`). Files and directories get the modes the process's
umask gives, as with any other tool, not ``tempfile``'s private 0600 / 0700.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable

from .config import ConfigError

TMP_PREFIX = ".larpo-tmp-"
_UMASK = os.umask(0)
os.umask(_UMASK)


def make_dir(path: Path, what: str = "--out") -> Path:
    """Create ``path`` (and its parents) if needed; a ConfigError naming ``what`` and the path if it cannot be."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError(f"{what} {path}: exists and is not a directory; expected a directory") from None
    except OSError as e:
        raise ConfigError(f"{what} {path}: cannot create it ({e.strerror})") from None
    return path


def temp_dir(beside: Path) -> Path:
    """A new empty directory next to ``beside`` (same file system, so it can be renamed onto it)."""
    path = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{beside.name}.", dir=beside.parent))
    path.chmod(0o777 & ~_UMASK)
    return path


def remove_stale_temporaries(root: Path) -> list[Path]:
    """Delete every larpo temporary under ``root`` (left by a killed write); return what was removed.

    Only safe while no other larpo process writes under ``root``: call it holding the run lock.
    """
    stale = sorted(root.rglob(f"{TMP_PREFIX}*"), key=lambda p: len(p.parts), reverse=False)
    removed = []
    for path in stale:
        if not path.exists() and not path.is_symlink():
            continue  # inside a temporary directory removed just before
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        removed.append(path)
    return removed


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{TMP_PREFIX}{path.name}.")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_jsonl_atomic(path: str | Path, rows: Iterable[dict]) -> None:
    write_text_atomic(path, "".join(json.dumps(row) + "\n" for row in rows))


def text_lines(path: Path, what: str) -> list[tuple[int, str]]:
    """``(line number from 1, line)`` for the non-blank lines of a user's JSON-lines file; a file that
    cannot be read or is not UTF-8 is a ConfigError naming it and ``what`` it was read as."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read {what} ({e.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; expected JSON lines") from None
    return [(number, line) for number, line in enumerate(lines, start=1) if line.strip()]


def read_jsonl(path: str | Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def append_jsonl(path: str | Path, row: dict) -> None:
    """Append one row; each row is one write of one line, so a kill loses at most that row."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def rewrite_jsonl(path: str | Path, drop: Callable[[dict], bool], rows: Iterable[dict] = ()) -> None:
    """Rewrite ``path`` (atomically) without the rows ``drop`` selects, then with ``rows`` appended.

    A stage that reruns after a kill first removes what its killed attempt logged.
    """
    path = Path(path)
    kept = [r for r in read_jsonl(path) if not drop(r)] if path.exists() else []
    write_jsonl_atomic(path, [*kept, *rows])
