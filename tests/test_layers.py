"""The house rules of docs/design.md ("Layers"), checked on the source: imports point one way, down the layers,
no module imports itself round a circle, and no source file is over 400 lines. Every import counts, also those
inside functions (made there to keep a command's start fast, they are dependencies all the same)."""
from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers import ROOT

# Lowest first. A module may import modules of its own layer or below, never above. The last layer is the
# commands: the modules a user runs (`python -m src.X`).
LAYERS = [
    ("errors", "fileio", "progress", "key_roles"),
    ("value_checks", "registry", "figures", "runtime"),
    ("config",),
    ("checkpoint_file",),
    ("data", "models"),
    ("command_rules",),
    ("inference",),
    ("evaluation",),
    ("training",),
    ("reporting",),
    ("entry",),
    ("train", "evaluate", "predict", "export", "demo", "report", "bench", "gpu_check", "models.__main__"),
]
MAX_LINES = 400


def layer_of(name: str) -> int:
    """The layer of module `src.X...`: its most specific entry (models.__main__ before models)."""
    short = name.split(".", 1)[1]
    matches = [(len(member), rank) for rank, members in enumerate(LAYERS) for member in members
               if short == member or short.startswith(member + ".")]
    assert matches, f"{name} is in no layer of tests/test_layers.py: add it to LAYERS and docs/design.md"
    return max(matches)[1]


def graph(root: Path) -> dict[str, set[str]]:
    """{module: the modules of root/src it imports} (`from package import name` counts as the submodule where
    one exists, else as the package)."""
    paths = {}
    for path in (root / "src").rglob("*.py"):
        parts = path.relative_to(root).with_suffix("").parts
        paths[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    known = set(paths)
    edges = {}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                submodules = {f"{target}.{alias.name}" for alias in node.names} & known
                found |= submodules or ({target} & known)
            elif isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names} & known
        edges[name] = found - {name, "src"}
    return edges


def upward_imports(edges: dict[str, set[str]]) -> list[str]:
    return [f"{a} (layer {layer_of(a)}) imports {b} (layer {layer_of(b)})"
            for a, targets in sorted(edges.items()) for b in sorted(targets) if layer_of(b) > layer_of(a)]


def circles(edges: dict[str, set[str]]) -> list[str]:
    """Import circles, each as "a -> b -> a". A package's __init__ importing its own submodules (re-exports)
    and a submodule importing its parent package are one module for this purpose."""
    def joined(a: str, b: str) -> bool:
        return b.startswith(a + ".") or a.startswith(b + ".")

    found, state = [], {}  # state: 1 on the current path, 2 done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(edges[node]):
            if joined(node, target):
                continue
            if state.get(target) == 1:
                found.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    return found


def test_every_import_points_down_the_layers():
    upward = upward_imports(graph(ROOT))
    assert not upward, "\n".join(upward)


def test_no_module_imports_itself_round_a_circle():
    found = circles(graph(ROOT))
    assert not found, "\n".join(found)


def test_no_source_file_is_over_the_limit():
    long = {str(path.relative_to(ROOT)): n for path in (ROOT / "src").rglob("*.py")
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"over {MAX_LINES} lines (one job per file): {long}"


def test_the_checks_see_an_upward_import_and_a_circle(tmp_path):
    """The checks themselves, on a small tree: data importing training (inside a function) is upward, two
    inference modules importing each other are a circle, a package's re-export is neither."""
    files = {
        "src/__init__.py": "",
        "src/data/__init__.py": "from .loader import Loader\n",
        "src/data/loader.py": "class Loader:\n    def f(self):\n        from ..training.trainer import Trainer\n",
        "src/training/__init__.py": "",
        "src/training/trainer.py": "from ..data import Loader\n",
        "src/inference/__init__.py": "",
        "src/inference/image_prediction.py": "from .video_prediction import predict_video\n",
        "src/inference/video_prediction.py": "from . import image_prediction\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    edges = graph(tmp_path)
    assert edges["src.data.loader"] == {"src.training.trainer"} and edges["src.training.trainer"] == {"src.data"}
    assert upward_imports(edges) == ["src.data.loader (layer 4) imports src.training.trainer (layer 8)"]
    assert circles(edges) == [
        "src.inference.image_prediction -> src.inference.video_prediction -> src.inference.image_prediction"]
    assert layer_of("src.models.__main__") == len(LAYERS) - 1 and layer_of("src.models.lenet") == 4
