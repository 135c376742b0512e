"""Code dependencies of a stage, derived from the source: the pipeline modules its module imports, transitively,
and the non-Python files those modules declare they read.

Read with `ast`, never by importing, so declaring the graph stays fast (no torch import on a no-op `doit`).
Every `import` statement counts, wherever it stands (a function-level import is still code the stage may run):
a dependency too many costs a rerun, one too few a stale artifact or a wrong cache hit.

A module that reads project files other than Python (C kernels, templates, app sources) names their folders,
relative to the project root, in a module-level literal `RESOURCES = ("mcux_app",)` and builds its paths from it,
so the declaration and the use are one value. Every file below such a folder is a dependency.
"""
import ast
import sys
from functools import cache
from pathlib import Path

from pipeline import ROOT

PACKAGE = "pipeline"
RESOURCES_NAME = "RESOURCES"


class DependencyError(ValueError):
    """A stage or import that does not resolve to a file of this project."""


def module_file(module: str) -> Path:
    """pipeline.a.b -> <root>/pipeline/a/b.py, or the package's __init__.py."""
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    raise DependencyError(f"module {module} has no file under {ROOT} (looked for {base}.py and {base}/__init__.py)")


def _is_module(module: str) -> bool:
    base = ROOT.joinpath(*module.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


@cache
def _parse(module: str) -> tuple[frozenset[str], frozenset[str], tuple[str, ...]]:
    """(pipeline modules it imports, top-level third-party/stdlib names it imports, its RESOURCES folders)."""
    path = module_file(module)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    ours, others, resources = set(), set(), ()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from pipeline.x import y`: y is a module when it has a file, else a name defined in pipeline.x
            submodules = [f"{node.module}.{alias.name}" for alias in node.names]
            names = [node.module] + [name for name in submodules if name.split(".")[0] == PACKAGE and _is_module(name)]
        for name in names:
            (ours if name.split(".")[0] == PACKAGE else others).add(name if name.split(".")[0] == PACKAGE
                                                                    else name.split(".")[0])
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == RESOURCES_NAME
                                                for t in node.targets):
            resources = ast.literal_eval(node.value)
            if not (isinstance(resources, tuple) and all(isinstance(r, str) for r in resources)):
                raise DependencyError(f"{path}: {RESOURCES_NAME} must be a tuple of folder names relative to the "
                                      f"project root, e.g. ('mcux_app',)")
    return frozenset(ours), frozenset(others), resources


def _with_packages(module: str) -> list[str]:
    """The module and every package above it: importing pipeline.a.b runs pipeline/__init__.py and a/__init__.py."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


@cache
def module_closure(*modules: str) -> tuple[str, ...]:
    """Every pipeline module (packages included) that importing `modules` may run, sorted."""
    seen, todo = set(), [m for module in modules for m in _with_packages(module)]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        imported, _, _ = _parse(module)
        todo.extend(m for name in imported for m in _with_packages(name) if m not in seen)
    return tuple(sorted(seen))


def _resource_files(folder: str) -> list[Path]:
    base = ROOT / folder
    if not base.exists():
        raise DependencyError(f"RESOURCES names {folder!r}, which does not exist under {ROOT}")
    return [base] if base.is_file() else sorted(p for p in base.rglob("*")
                                                  if p.is_file() and "__pycache__" not in p.parts)


@cache
def code_files(*modules: str) -> tuple[str, ...]:
    """The project files whose content decides what running `modules` does: the Python files of their import
    closure and every file in the RESOURCES folders those modules name; relative to the project root (doit's
    working folder, so a copied tree keeps its up-to-date state), sorted."""
    files = set()
    for module in module_closure(*modules):
        files.add(module_file(module))
        for folder in _parse(module)[2]:
            files.update(_resource_files(folder))
    return tuple(sorted(str(f.relative_to(ROOT)) for f in files))


@cache
def imported_libraries(*modules: str) -> tuple[str, ...]:
    """Top-level names of the non-standard-library packages the closure imports (e.g. torch, numpy), sorted."""
    names = set()
    for module in module_closure(*modules):
        names.update(name for name in _parse(module)[1] if name not in sys.stdlib_module_names)
    return tuple(sorted(names))

