"""How a client in a checkout opens a model's registry: one opener for the CLI, serving, the plugin,
lineage and the cost and routing reports.

Inputs: the model's params, its name, its folder (the params file's directory; None: paths as given,
no git), and for a writer the environment that holds its signing key (read by the caller).
Outputs: a `store.Store` whose relative root and key files are the folder's, whose trusted keys come
from params (in git), and whose ledger is checked against the heads kept in the folder's git
repository. A local `registry.root` may not be the project folder nor lie inside or around the raw
data, a golden set, or the git or DVC directories (refused with `OutputError`, exit 2).
Lifecycle workers open theirs in `orchestration.steps` (the shared git remote is their anchor).
"""
from __future__ import annotations

from pathlib import Path

from pipelines.core.config import Params
from pipelines.core.paths import Workspace
from pipelines.registry import signing
from pipelines.registry import store as registry
from pipelines.registry.anchor import GitAnchor


def registry_root(params: Params, folder: Path | None) -> str:
    """`registry.root` as this folder sees it (a relative root is the folder's, not the process' cwd)."""
    root = params.registry.root
    if folder is not None and "://" not in root and not Path(root).is_absolute():
        return str(Path(folder) / root)
    return root


def model_store(params: Params, model: str, folder: Path | None,
                writer_env: dict[str, str] | None = None) -> registry.Store:
    root = registry_root(params, folder)
    if folder is not None:
        Workspace.of(params, folder, relative_to=folder).check_registry_root(root)
    return registry.open_store(root, model, signing.keys_for(params.registry, writer_env, folder=folder),
                               GitAnchor.of_folder(folder))
