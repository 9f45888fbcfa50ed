"""The package's layers: no module imports one of a higher layer (lazy imports inside functions included)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "workflow" / "scripts" / "fedglioma"

#: Layer of each top-level module or sub-package, lowest first. Command-line modules (``*/cli.py``) and the
#: modules that wire steps to rules and commands sit on top and may import anything.
LAYERS: dict[str, int] = {
    **dict.fromkeys(("atomic", "errors", "constants", "logs", "lazy", "declared", "settings", "endpoints", "metrics", "faults", "threads"), 0),
    **dict.fromkeys(("io", "config"), 1),
    **dict.fromkeys(("preprocess", "synth", "model"), 2),
    "federated": 3,
    "train": 4,
    "evaluate": 5,
    "report": 6,
    **dict.fromkeys(("predict", "federation"), 7),  # federation: the Flower mode runs the steps of the layers below
    **dict.fromkeys(("registry", "cli", "smk", "audit", "check"), 8),
}
TOP = 8


def _unit(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py")


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = ([node.module] if isinstance(node, ast.ImportFrom) and node.module else
                 [a.name for a in node.names] if isinstance(node, ast.Import) else [])
        for name in names:
            parts = name.split(".")
            if parts[0] == "fedglioma" and len(parts) > 1:
                out.add(parts[1])
    return out


def test_every_module_has_a_layer() -> None:
    units = {_unit(p) for p in PACKAGE.rglob("*.py")} - {"__init__", "__main__"}
    assert units - set(LAYERS) == set(), "add the new module to LAYERS"


def test_no_module_imports_a_higher_layer() -> None:
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        unit = _unit(path)
        if unit in ("__init__", "__main__"):
            continue
        level = TOP if path.name == "cli.py" else LAYERS[unit]
        for target in _imports(path) - {unit}:
            if LAYERS.get(target, 0) > level:
                wrong.append(f"{path.relative_to(PACKAGE)} (layer {level}) imports fedglioma.{target} "
                             f"(layer {LAYERS[target]})")
    assert not wrong, "\n".join(wrong)
