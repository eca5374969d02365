"""The package boundaries of ../shared/DESIGN.md, read from every import statement (top level or inside a function):
dicom_node never imports torch, engines or service; engines never imports DICOM libraries, dicom_node, service or the
infrastructure the service owns."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

FORBIDDEN = {
    "dicom_node": {"torch", "monai", "onnxruntime", "tensorrt", "service", "engines"},
    "engines": {"pydicom", "pynetdicom", "highdicom", "service", "dicom_node", "celery", "sqlalchemy", "fastapi"},
}


def imported_packages(path: Path) -> set[tuple[int, str]]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {(node.lineno, alias.name.split(".")[0]) for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add((node.lineno, node.module.split(".")[0]))
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_package_imports_nothing_its_boundary_forbids(package):
    crossings = [f"{path.relative_to(ROOT)}:{line} imports {name}"
                 for path in sorted((ROOT / package).rglob("*.py"))
                 for line, name in sorted(imported_packages(path)) if name in FORBIDDEN[package]]
    assert not crossings, "\n".join(crossings)
