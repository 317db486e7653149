"""Run outputs must never be committed on main (the demo's promise is that it modifies no tracked file),
and the package's modules import each other one way only."""
import ast
import subprocess

import pytest

from tests.conftest import ROOT

RUN_OUTPUTS = ("dvc.lock", "data/raw.dvc", "data/raw", "data/prepared", "models/candidate", "registry",
               "reports", "checkpoints", ".dvc-storage", ".dvc/cache")
RUN_OUTPUTS += tuple(f"projects/{m}/{o}" for m in ("text-classifier", "it-helpdesk", "support-assistant") for o in RUN_OUTPUTS)


def tracked() -> list[str]:
    proc = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip("not a git checkout")
    return proc.stdout.splitlines()


@pytest.mark.parametrize("output", RUN_OUTPUTS)
def test_run_outputs_are_not_tracked(output):
    assert not [f for f in tracked() if f == output or f.startswith(output + "/")]


def _imports(path) -> set[str]:
    """The `pipelines.*` modules a module imports, at any depth of the file (lazy imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pipelines"):
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("pipelines")}
    return found


def test_no_import_cycles_in_the_package():
    modules = {".".join(p.relative_to(ROOT).with_suffix("").parts): p for p in (ROOT / "pipelines").rglob("*.py")}
    modules = {name.removesuffix(".__init__"): p for name, p in modules.items()}
    graph = {name: {m for m in _imports(p) if m in modules and m != name} for name, p in modules.items()}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph[start] - seen:
            if nxt == goal or reaches(nxt, goal, seen | {nxt}):
                return True
        return False

    cycles = sorted(f"{a} <-> {b}" for a in graph for b in graph[a] if a < b and reaches(b, a, {b}))
    assert cycles == []


# Which layers of the package each layer may import: lower layers never reach up, and the folders say
# so. (cli and __main__ sit on top and may import anything.)
LAYERS = {
    "tasks": set(),
    "core": {"tasks"},
    "training": {"core", "tasks"},
    "inference": {"core", "tasks", "training"},
    "stages": {"core", "tasks", "training", "inference", "economics"},
    "registry": {"core", "tasks", "training"},
    "serving": {"core", "tasks", "training", "inference", "registry", "economics"},
    "economics": {"core"},
    "orchestration": {"core", "tasks", "registry", "economics"},
    "devtools": {"core", "tasks", "training", "inference", "stages", "registry", "serving", "orchestration"},
}


def _layer_edges():
    for path in (ROOT / "pipelines").rglob("*.py"):
        parts = path.relative_to(ROOT / "pipelines").parts
        if len(parts) < 2:
            continue  # cli.py, __main__.py, __init__.py
        for target in _imports(path):
            layer = target.split(".")[1] if target.count(".") >= 1 else None
            if layer in LAYERS and layer != parts[0]:
                yield parts[0], layer, "/".join(parts), target


def test_every_layer_is_a_folder_in_the_table():
    folders = {p.name for p in (ROOT / "pipelines").iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders == set(LAYERS)
    assert sorted(p.name for p in (ROOT / "pipelines").glob("*.py")) == ["__init__.py", "__main__.py", "cli.py"]


def test_layers_import_only_the_layers_beneath_them():
    upward = sorted(f"{src} imports {target} ({layer})" for owner, layer, src, target in _layer_edges()
                    if layer not in LAYERS[owner])
    assert upward == []


def test_no_stage_imports_another_stage():
    crossing = sorted(f"{p.name} imports {t}" for p in (ROOT / "pipelines" / "stages").glob("*.py")
                      for t in _imports(p) if t.startswith("pipelines.stages.") and t.split(".")[2] != p.stem)
    assert crossing == []
