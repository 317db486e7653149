"""What each lifecycle task read and wrote, as OpenLineage datasets in plain data.

Inputs: the task's workspace after it ran (the run's dvc.lock, its raw .dvc file, the GX result, the
gate's decision), or the registry entry it wrote. Outputs: `{"inputs": [...], "outputs": [...]}`,
each dataset `{"namespace", "name", "facets": {key: fields}}`, carried in the task's return value
(key `lineage_io`). The OpenLineage provider's extractor (`dags/lifecycle_openlineage.py`) turns it
into the events' datasets and facets; with OpenLineage off it is a few small dicts.

Names connect the chain: a stage's output and the next stage's input are the same path of the same
git remote (`<namespace>` the remote, `<name>` the model folder's path), the content's md5 (DVC's)
in the `version` facet; registry versions are `<model>/vNNNN` and the served alias `<model>@<alias>`
in the registry's namespace (its root URL). Custom facets (`FACETS`) carry what `pipelines lineage`
verifies: content hashes, the GX verdict, the gate's decision, the registry version's hashes.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from pipelines.core.config import Params

# The custom facets: key -> the fields it carries (the extractor builds one attrs class per key).
FACETS: dict[str, tuple[str, ...]] = {
    "mlops_contentHash": ("algorithm", "hash", "files"),
    "mlops_gxValidation": ("status", "success", "rows", "quarantined_rows", "failed_checks", "gx_version"),
    "mlops_gateDecision": ("passed", "candidate_hash", "summary", "reasons", "champion_version"),
    "mlops_registryVersion": ("model", "version", "manifest_sha256", "candidate_hash", "adapter_sha256",
                              "base_model", "base_hash", "data_version", "signed_by"),
    "mlops_alias": ("model", "alias", "version"),
    "mlops_gitCommit": ("branch", "commit", "ledger_head"),
}
Dataset = dict[str, Any]


def namespace_of(location: str) -> str:
    """An OpenLineage namespace for a git remote or a registry root: a URL as is, a path as file://."""
    return location if "://" in location else Path(location).resolve().as_uri()


def dataset(namespace: str, name: str, **facets: dict[str, Any]) -> Dataset:
    for key, fields in facets.items():
        unknown = set(fields) - set(FACETS[key]) if key in FACETS else set()
        if unknown:
            raise ValueError(f"facet {key}: unknown fields {sorted(unknown)}")
    return {"namespace": namespace, "name": name, "facets": facets}


def _data(namespace: str, folder: str, entry: dict[str, Any]) -> Dataset:
    """A DVC-tracked path of the model folder (`folder`, relative to the repository) at its md5."""
    md5 = str(entry.get("md5", ""))
    return dataset(namespace, f"{folder}/{entry['path']}", version={"datasetVersion": md5},
                   mlops_contentHash={"algorithm": "md5 (DVC)", "hash": md5, "files": entry.get("nfiles", 1)})


def _read(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) if path.suffix in (".yaml", ".yml", ".lock", ".dvc") \
            else json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return None


def _verdicts(params: Params, project: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """The facets of the outputs whose content is a verdict: the GX result, the gate's decision."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    result = _read(project / params.validate_.report_dir / "result.json")
    if isinstance(result, dict):
        out[f"{params.validate_.report_dir}/result.json"] = {"mlops_gxValidation": {
            "status": result.get("status"), "success": result.get("success"), "rows": result.get("rows"),
            "quarantined_rows": result.get("quarantined_rows"), "failed_checks": result.get("failed_checks"),
            "gx_version": result.get("gx_version")}}
    decision = _read(project / params.gate.decision_path)
    if isinstance(decision, dict):
        failed = [r for r in decision.get("rules", []) if not r.get("passed")]
        out[params.gate.decision_path] = {"mlops_gateDecision": {
            "passed": decision.get("passed") is True, "candidate_hash": decision.get("candidate_hash"),
            "summary": f"{len(decision.get('rules', [])) - len(failed)}/{len(decision.get('rules', []))} rules",
            "reasons": [f"{r.get('rule')}: {r.get('detail')}" for r in failed],
            "champion_version": decision.get("champion_version")}}
    return out


def stage_io(params: Params, project: Path, folder: str, git_remote: str, stage: str) -> dict[str, list[Dataset]]:
    """A DVC stage's data deps and outs as recorded in the run's dvc.lock (code deps left out: the
    git commit in the run facet names the code)."""
    lock = _read(project / "dvc.lock")
    entry = (lock or {}).get("stages", {}).get(stage) if isinstance(lock, dict) else None
    if not isinstance(entry, dict):
        return {"inputs": [], "outputs": []}
    ns, verdicts = namespace_of(git_remote), _verdicts(params, project)
    inputs = [_data(ns, folder, d) for d in entry.get("deps", []) if not str(d.get("path", "")).startswith("..")]
    outputs = []
    for out in entry.get("outs", []):
        data = _data(ns, folder, out)
        data["facets"].update(verdicts.get(out["path"], {}))
        outputs.append(data)
    return {"inputs": inputs, "outputs": outputs}


def snapshot_io(params: Params, project: Path, folder: str, git_remote: str) -> dict[str, list[Dataset]]:
    """The raw drop the run snapshotted (its .dvc file, committed on the run's ref)."""
    tracked = _read(project / f"{params.data.raw}.dvc")
    outs = tracked.get("outs", []) if isinstance(tracked, dict) else []
    return {"inputs": [], "outputs": [_data(namespace_of(git_remote), folder, {**o, "path": params.data.raw})
                                      for o in outs[:1]]}


def registry_version(registry_root: str, manifest: dict[str, Any], manifest_sha256: str,
                     signed_by: str | None) -> Dataset:
    model, version = manifest["model"], int(manifest["version"])
    return dataset(namespace_of(registry_root), f"{model}/v{version:04d}", version={"datasetVersion": manifest_sha256},
                   mlops_registryVersion={
                       "model": model, "version": version, "manifest_sha256": manifest_sha256,
                       "candidate_hash": manifest.get("candidate_hash"), "adapter_sha256": manifest.get("adapter_sha256"),
                       "base_model": manifest.get("base_model"), "base_hash": manifest.get("base_hash"),
                       "data_version": manifest.get("data_version"), "signed_by": signed_by})


def alias(registry_root: str, model: str, name: str, version: int) -> Dataset:
    return dataset(namespace_of(registry_root), f"{model}@{name}", version={"datasetVersion": f"v{version}"},
                   mlops_alias={"model": model, "alias": name, "version": version})


def promote_io(params: Params, project: Path, folder: str, git_remote: str, registry_root: str,
               manifest: dict[str, Any], manifest_sha256: str, signed_by: str | None) -> dict[str, list[Dataset]]:
    """Read: the candidate adapter and the gate's decision; wrote: the registry version and the alias."""
    wanted = {f"{folder}/{params.train.output_dir}", f"{folder}/{params.gate.decision_path}"}
    inputs = [o for stage in ("train", "gate") for o in stage_io(params, project, folder, git_remote, stage)["outputs"]
              if o["name"] in wanted]
    version = registry_version(registry_root, manifest, manifest_sha256, signed_by)
    return {"inputs": inputs, "outputs": [version, alias(registry_root, manifest["model"], params.serve.alias,
                                                         int(manifest["version"]))]}


def record_io(git_remote: str, branch: str, commit: str, ledger_head: dict | None,
              read: list[Dataset]) -> dict[str, list[Dataset]]:
    """The lineage task: what it recorded (`read`: the version promoted or the decision) and the commit."""
    return {"inputs": read, "outputs": [dataset(namespace_of(git_remote), f"lineage@{branch}",
                                                version={"datasetVersion": commit},
                                                mlops_gitCommit={"branch": branch, "commit": commit,
                                                                 "ledger_head": ledger_head})]}
