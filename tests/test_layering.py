"""The package layering, four rules: ``common/`` never names a method package; ``common/app/`` (the commands) is
imported only from inside it (and by tests, benchmarks, notebooks); neither method package imports the other; and no
module imports itself through others.

Every import counts, function-local ones included (a lazy import still ties two modules together)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "ark_asr", "askd_whisper")
METHOD_PACKAGES = ("ark_asr", "askd_whisper")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules imported anywhere in ``path`` (``from pkg import mod`` resolves to ``pkg.mod`` if it is one)."""
    out: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:  # a name inside a module -> the module
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def import_graph() -> dict[str, set[str]]:
    mods = project_modules()
    return {name: imports_of(name, path, set(mods)) for name, path in mods.items()}


def test_common_never_imports_a_method_package():
    graph = import_graph()
    offenders = sorted(
        f"{m} -> {t}"
        for m, ts in graph.items()
        if m.split(".")[0] == "common"
        for t in ts
        if t.split(".")[0] in METHOD_PACKAGES
    )
    assert not offenders, "common/ reaches the methods only through common.registry: " + "; ".join(offenders)


def test_only_the_commands_import_the_product_layer():
    graph = import_graph()
    offenders = sorted(
        f"{m} -> {t}"
        for m, ts in graph.items()
        if not m.startswith("common.app")
        for t in ts
        if t == "common.app" or t.startswith("common.app.")
    )
    assert not offenders, "the library must not import common/app (the commands): " + "; ".join(offenders)
    assert any(t.startswith("common.app.") for t in graph["common.app.cli"])  # the walker sees the package


def test_no_method_imports_the_other():
    graph = import_graph()
    offenders = sorted(
        f"{m} -> {t}"
        for m, ts in graph.items()
        if m.split(".")[0] in METHOD_PACKAGES
        for t in ts
        if t.split(".")[0] in METHOD_PACKAGES and t.split(".")[0] != m.split(".")[0]
    )
    assert not offenders, "a method package reaches the other only through common.registry: " + "; ".join(offenders)


def test_no_import_cycles():
    graph = import_graph()
    # a package's __init__ importing its own submodules is the usual re-export, not a cycle
    edges = {m: {t for t in ts if not (m and t.startswith(m + "."))} for m, ts in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(edges.get(m, ())):
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t) :] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_graph_sees_lazy_imports():
    """The walker is not blind: it finds a function-local import and the registry's entry points."""
    graph = import_graph()
    assert "common.registry" in graph["common.app.experiment"]
    assert "common.training.fit" in graph["ark_asr.run"] or "common.training" in graph["ark_asr.run"]
    assert "ark_asr.run" in graph["ark_asr.method"]  # imported inside _fit


def test_registry_lists_both_methods():
    from common import registry

    methods = registry.methods()
    assert {"ark_asr", "askd_whisper"} <= set(methods)
    assert methods["ark_asr"].config.__name__ == "ArkConfig" and methods["askd_whisper"].export is not None
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        registry.get("nope")
