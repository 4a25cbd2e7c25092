"""The layering rules of ARCHITECTURE.md, checked on the source: each package imports only
the layers below it (lazy imports included), job packages never import each other, and no two
modules import each other, directly or through others."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.inprocess

PACKAGE = Path(__file__).resolve().parent.parent / "nexus_jobs"

CORE, CLI, UPSTREAMS = {"core"}, {"cli"}, {"nexus", "openclaw"}
JOBS = {"session_upload", "webhook_pull", "bsnexus", "mqtt_worker"}
# What each package may import, besides itself and the package root (its version).
ALLOWED = {
    "core": set(),
    "cli": CORE,
    "nexus": CORE,
    "openclaw": CORE,
    "session_upload": CORE | CLI | {"nexus", "openclaw"},
    "webhook_pull": CORE | CLI | {"nexus", "openclaw"},
    "bsnexus": CORE | CLI,
    "mqtt_worker": CORE | CLI,
    "control": CORE | CLI | UPSTREAMS | JOBS,
}
# The one top-layer exception: nexus-jobs reads each job's option descriptions.
CONTROL_MAY_READ = {"session_upload.command", "webhook_pull.command", "bsnexus.settings", "mqtt_worker.settings"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(part for part in parts if part != "__init__")


def imports_of(path: Path) -> set[str]:
    """Every project module ``path`` imports, anywhere in the file, as dotted names below
    ``nexus_jobs``."""
    name = module_name(path)
    package = name.split(".")[:-1] if path.name != "__init__.py" else name.split(".")
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                target = [*base, *(node.module.split(".") if node.module else [])]
            elif node.module and node.module.startswith("nexus_jobs"):
                target = node.module.split(".")[1:]
            else:
                continue
            for alias in node.names:
                candidate = ".".join([*target, alias.name])
                found.add(candidate if _exists(candidate) else ".".join(target))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("nexus_jobs."):
                    found.add(alias.name.removeprefix("nexus_jobs."))
    return {module for module in found if module}


def _exists(dotted: str) -> bool:
    base = PACKAGE.joinpath(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def graph() -> dict[str, set[str]]:
    return {module_name(path): imports_of(path) for path in sorted(PACKAGE.rglob("*.py"))}


def test_every_module_belongs_to_a_known_package() -> None:
    loose = [name for name in graph() if name and name.split(".")[0] not in ALLOWED]
    assert loose == [], "modules outside the layers of ARCHITECTURE.md"


def test_packages_import_only_the_layers_below_them() -> None:
    wrong = []
    for module, targets in graph().items():
        if not module:
            continue
        own = module.split(".")[0]
        for target in targets:
            other = target.split(".")[0]
            if other == own or other == "__version__":
                continue
            if other not in ALLOWED[own]:
                wrong.append(f"{module} imports {target}")
            elif own == "control" and other in JOBS and target not in CONTROL_MAY_READ:
                wrong.append(f"{module} imports {target} (only the jobs' option descriptions)")
    assert wrong == []


def test_no_import_cycles() -> None:
    edges = graph()
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        for target in sorted(edges.get(module, ())):
            if target in path:
                cycles.append(" -> ".join([*path[path.index(target) :], target]))
            elif target in edges and target not in done:
                visit(target, [*path, target])
        done.add(module)

    done: set[str] = set()
    for module in sorted(edges):
        if module not in done:
            visit(module, [module])
    assert cycles == []
