"""Data flows one way: a lower layer never imports a higher one.

Reads every module's imports (top-level and function-local alike, from the source, without
running it) and fails naming the file, the line and the two layers.
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent

#: Lowest first. A module may import its own layer and the layers below it, never above.
LAYERS = ["core", "frontend", "relearn", "passes", "backend", "pipeline", "apps"]


def layer_of(module: str) -> str:
    """``rebirth_tvm.<package>...`` → its layer; the top-level modules (CLIs, studies) are apps."""
    parts = module.split(".")
    if parts[0] != "rebirth_tvm":
        raise ValueError(module)
    if len(parts) == 1 or parts[1] not in LAYERS:
        return "apps"
    return parts[1]


def source_modules():
    for path in sorted((ROOT / "rebirth_tvm").rglob("*.py")):
        relative = path.relative_to(ROOT).with_suffix("")
        yield ".".join(p for p in relative.parts if p != "__init__"), path
    for path in sorted((ROOT / "passes").rglob("*.py")):
        relative = path.relative_to(ROOT / "passes").with_suffix("")
        yield ".".join(["rebirth_tvm", "passes", *[p for p in relative.parts if p != "__init__"]]), path


def imports_of(module: str, path: pathlib.Path):
    """(line, imported module) for every import of ours in the file, relative ones resolved."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            # ``from rebirth_tvm import cli`` imports rebirth_tvm.cli
            names = [f"{base}.{alias.name}" if base == "rebirth_tvm" else base for alias in node.names]
        else:
            continue
        for name in names:
            if name == "rebirth_tvm" or name.startswith("rebirth_tvm."):
                yield node.lineno, name


def test_the_layer_table_covers_every_package():
    packages = {p.name for p in (ROOT / "rebirth_tvm").iterdir() if (p / "__init__.py").exists()}
    assert packages == set(LAYERS) - {"passes", "apps"}, "a new package needs a row in LAYERS"
    assert (ROOT / "passes" / "__init__.py").exists(), "the top-level passes/ folder is part of the published layout"


@pytest.mark.parametrize("module,path", list(source_modules()), ids=lambda v: v if isinstance(v, str) else "")
def test_no_lower_layer_imports_a_higher_one(module, path):
    own = LAYERS.index(layer_of(module))
    upward = [f"{path.relative_to(ROOT)}:{line} imports {name} ({layer_of(name)}, above {layer_of(module)})"
              for line, name in imports_of(module, path)
              if name != "rebirth_tvm" and LAYERS.index(layer_of(name)) > own]
    assert not upward, "\n".join(upward)


def test_the_check_sees_an_upward_import(tmp_path):
    # The rule itself must be able to fail: a core module importing the pipeline is caught.
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from rebirth_tvm.pipeline import compile_model\n")
    found = [(line, name) for line, name in imports_of("rebirth_tvm.core.bad", bad)]
    assert found == [(2, "rebirth_tvm.pipeline")]
    assert LAYERS.index(layer_of(found[0][1])) > LAYERS.index(layer_of("rebirth_tvm.core.bad"))
