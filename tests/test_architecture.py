"""docs/architecture.md is the code: every module of src/larpo is named there, imports run only downwards
through the layers it lists, and no import circle exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "larpo"
DOC = (ROOT / "docs" / "architecture.md").read_text()


def module_name(path: Path) -> str:
    """``tasks/base.py`` → ``tasks.base``; ``tasks/__init__.py`` → ``tasks``."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts) or "__init__"


def larpo_imports(path: Path) -> set[str]:
    """The larpo modules ``path`` imports (relative imports), by module name."""
    package = module_name(path).split(".") if path.name == "__init__.py" else module_name(path).split(".")[:-1]
    package = [] if package == ["__init__"] else package
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)]
            names = [node.module] if node.module else [alias.name for alias in node.names]
            for name in names:
                target = ".".join([*base, name])
                # "from . import x": x is a module only if such a file exists; else a name of the package
                found.add(target if (PACKAGE / Path(*target.split("."))).with_suffix(".py").exists()
                          or (PACKAGE / Path(*target.split("."))).is_dir() else ".".join(base) or "__init__")
    return found


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def layers() -> dict[str, int]:
    """Module (or ``tasks`` for the package) → its layer's index, 0 the top, from the doc's layer block."""
    block = DOC.split("## Layers", 1)[1].split("```")[1]
    layer, index = {}, -1
    for line in block.strip("\n").splitlines():
        if not line.startswith(" "):
            index += 1
        for name in re.findall(r"([a-z_]+)(?:\.py|/)", line):
            layer[name] = index
    return layer


def test_every_module_is_named_in_the_architecture_page():
    named = set(re.findall(r"^\| `([a-z_/]+\.py)` \|", DOC, flags=re.MULTILINE))
    files = {str(p.relative_to(PACKAGE)) for p in MODULES.values()}
    assert files - named == set(), "modules missing from docs/architecture.md's table"
    assert named - files == set(), "docs/architecture.md names modules that do not exist"
    listed = layers()
    top_level = {name.split(".")[0] for name in MODULES if name != "__init__"}
    assert top_level - set(listed) == set(), "modules missing from docs/architecture.md's layers"


def test_imports_run_downwards_through_the_layers():
    listed = layers()
    upward = []
    for name, path in MODULES.items():
        if name == "__init__":
            continue
        mine = listed[name.split(".")[0]]
        for dep in larpo_imports(path):
            if dep.split(".")[0] != name.split(".")[0] and listed[dep.split(".")[0]] < mine:
                upward.append(f"{name} imports {dep}")
    assert upward == []


def test_no_import_circle():
    graph = {name: {d for d in larpo_imports(path) if not d.startswith(f"{name}.")} for name, path in MODULES.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> list[str] | None:
        state[name] = 1
        for dep in sorted(graph.get(name, ())):
            if state.get(dep) == 1:
                return [*path, name, dep]
            if dep not in state and (circle := visit(dep, [*path, name])):
                return circle
        state[name] = 2
        return None

    for name in sorted(graph):
        if name not in state:
            assert visit(name, []) is None
