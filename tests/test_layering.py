"""Import layering, checked statically (``ast``, so imports inside functions count too).

- ``envs/`` (the environments) never imports ``dpolicy`` (the learning library);
- inside ``dpolicy``, lower layers never import higher ones: data and models < policies <
  training, evaluation, control < commands, bench.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

#: Package (dotted) -> packages its modules must not import.
FORBIDDEN = {
    "dpolicy.data": ("dpolicy.policies", "dpolicy.training", "dpolicy.evaluation", "dpolicy.control",
                     "dpolicy.commands", "dpolicy.bench"),
    "dpolicy.models": ("dpolicy.policies", "dpolicy.training", "dpolicy.evaluation", "dpolicy.control",
                       "dpolicy.commands", "dpolicy.bench"),
    "dpolicy.policies": ("dpolicy.training", "dpolicy.evaluation", "dpolicy.control", "dpolicy.commands",
                         "dpolicy.bench"),
    "dpolicy.training": ("dpolicy.commands", "dpolicy.bench"),
    "dpolicy.evaluation": ("dpolicy.commands", "dpolicy.bench"),
    "dpolicy.control": ("dpolicy.commands", "dpolicy.bench"),
}


def module_name(path: Path, root: Path = REPO_ROOT) -> str:
    """Dotted module name of a file under ``root`` (``pkg/__init__.py`` -> ``pkg``)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path, root: Path = REPO_ROOT) -> Iterator[tuple[int, str]]:
    """``(line, dotted module)`` for every import in the file, anywhere in it.

    ``from a import b`` yields ``a.b`` as well as ``a`` (``b`` may be a submodule); relative imports
    are resolved against the file's package.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module_name(path, root).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parent = package[:len(package) - (node.level - 1)]
                base = ".".join(parent + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            yield node.lineno, base
            for alias in node.names:
                if alias.name != "*":
                    yield node.lineno, f"{base}.{alias.name}"


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def violations_in(files, forbidden: tuple[str, ...], root: Path = REPO_ROOT) -> list[str]:
    """``"file:line: imports module"`` for every import of a module inside one of ``forbidden``."""
    found = []
    for path in files:
        seen = set()
        for line, module in imported_modules(path, root):
            if line in seen or not any(_within(module, package) for package in forbidden):
                continue
            seen.add(line)  # one entry per import statement (``from a import b`` yields a and a.b)
            found.append(f"{path.relative_to(root)}:{line}: imports {module}")
    return found


def test_envs_never_import_dpolicy():
    files = sorted((REPO_ROOT / "envs").rglob("*.py"))
    assert files, "no files under envs/"
    violations = violations_in(files, ("dpolicy",))
    assert not violations, "envs/ must not depend on dpolicy:\n" + "\n".join(violations)


def test_lower_dpolicy_layers_do_not_import_higher_ones():
    # Known violation when this test was written (left failing on purpose, to be fixed in dpolicy/):
    #   dpolicy/data/cli.py:135: imports dpolicy.evaluation.report (write_video, in run_video)
    violations = []
    for package, forbidden in FORBIDDEN.items():
        directory = REPO_ROOT.joinpath(*package.split("."))
        assert directory.is_dir(), f"{package} is missing"
        violations += violations_in(sorted(directory.rglob("*.py")), forbidden)
    assert not violations, "layering violations in dpolicy/:\n" + "\n".join(violations)


def test_the_import_scanner_sees_nested_and_relative_imports(tmp_path):
    """The checks above would pass vacuously if the scanner missed imports: check it on a sample."""
    package = tmp_path / "dpolicy" / "data"
    package.mkdir(parents=True)
    sample = package / "sample.py"
    sample.write_text("import os\n"
                      "from dpolicy.data import windows\n"
                      "def f():\n"
                      "    from dpolicy.training import trainer\n"
                      "    from ..policies import base\n"
                      "    if True:\n"
                      "        import dpolicy.commands.bench as cli\n"
                      "    from . import normalizer\n")
    modules = {m for _, m in imported_modules(sample, tmp_path)}
    assert {"os", "dpolicy.data.windows", "dpolicy.training.trainer", "dpolicy.policies.base",
            "dpolicy.commands.bench", "dpolicy.data.normalizer"} <= modules
    found = violations_in([sample], FORBIDDEN["dpolicy.data"], tmp_path)
    assert [v.split(":")[1] for v in found] == ["4", "5", "7"], found
    assert found[0] == "dpolicy/data/sample.py:4: imports dpolicy.training"
