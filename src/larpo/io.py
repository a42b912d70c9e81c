"""Files a run leaves: written to a temporary name and renamed into place, or appended by rows."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
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
