"""A sweep's grid file: config overrides per cell × seeds, read and checked before anything runs.

::

    name: temperature
    config: null                  # base config file, relative to the grid file (null: the default)
    overrides: [loop.iterations=2]   # applied to every cell
    seeds: [0, 1, 2, 3, 4]
    baseline: T=0.9               # the cell the others are compared with
    metrics: [final.exact_accuracy, final.gold_reward]   # dotted paths into summary.json
    cells:
      T=0.3: [sampling.temperature=0.3]
      T=0.9: [sampling.temperature=0.9]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from . import config as C
from .config import ConfigError


@dataclass(frozen=True)
class Grid:
    name: str
    config: Path | None
    overrides: list[str]
    seeds: list[int]
    cells: dict[str, list[str]]
    baseline: str | None
    metrics: list[str]


def load_grid(path: str | Path) -> Grid:
    """Read and check a grid file; errors name the file and the key."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError(f"{path}: cannot read grid ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with name, seeds and cells")
    allowed = {"name", "config", "overrides", "seeds", "cells", "baseline", "metrics"}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(f"{path}: {unknown[0]}: unknown key; expected one of {', '.join(sorted(allowed))}")
    cells = data.get("cells")
    if not isinstance(cells, dict) or not cells or not all(isinstance(v, list) for v in cells.values()):
        raise ConfigError(f"{path}: cells: expected a mapping of cell name to a list of overrides")
    seeds = data.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ConfigError(f"{path}: seeds: expected a non-empty list of integers")
    baseline = data.get("baseline")
    if baseline is not None and baseline not in cells:
        raise ConfigError(f"{path}: baseline: {baseline!r} is not one of the cells ({', '.join(map(str, cells))})")
    config = data.get("config")
    grid = Grid(
        name=str(data.get("name", path.stem)),
        config=(path.parent / config) if config else None,
        overrides=[str(o) for o in data.get("overrides", [])],
        seeds=seeds,
        cells={str(k): [str(o) for o in v] for k, v in cells.items()},
        baseline=baseline,
        metrics=list(data.get("metrics", ["final.exact_accuracy", "final.gold_reward"])),
    )
    for cell, overrides in grid.cells.items():  # fail before any run, naming the cell
        try:
            C.load(grid.config, [*grid.overrides, *overrides])
        except ConfigError as e:
            raise ConfigError(f"{path}: cell {cell!r}: {e}") from None
    return grid
