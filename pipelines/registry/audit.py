"""Lineage for auditors: the chain from a served model version back to the raw rows, re-verified.

Inputs: the registry (ledger, version manifest and the evidence stored beside each version:
dvc.lock, params.yaml, the raw data's .dvc file, validation/training/evaluation reports and the gate
decision), the DVC cache and default remote, and the git repository.
Outputs: `trace()` returns the chain as a dict, one link per step (served version -> registry
manifest -> gate decision -> evaluation -> training -> prepared data -> GX validation -> raw files ->
Airflow run), each with `status` ok | altered | missing and what was checked; `"verified": true` only
when every link is ok. `render_html()` renders it for the `--html` file and the Airflow UI page.
`evidence()` collects the files a promotion stores beside the version.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import yaml

from pipelines.core.config import Params
from pipelines.core.errors import CheckFailed, InputError
from pipelines.core.hashing import md5_file, sha256_bytes
from pipelines.registry import access
from pipelines.registry import store as registry

Link = dict[str, Any]


def evidence_paths(params: Params) -> dict[str, str]:
    """What a run leaves as evidence: name -> path in the project (the lineage commit and the registry use it)."""
    paths = {"dvc.lock": "dvc.lock", "params.yaml": "params.yaml", "raw.dvc": f"{params.data.raw}.dvc"}
    for rel in params.lineage.evidence:
        p = Path(rel)
        paths[f"{p.parent.name}_{p.name}"] = rel
    return paths


def evidence(params: Params, root: Path = Path(".")) -> dict[str, bytes]:
    """The files a promotion copies beside the version: name -> bytes (absent files are skipped)."""
    return {name: (root / rel).read_bytes() for name, rel in evidence_paths(params).items() if (root / rel).is_file()}


# ---------------------------------------------------------------- DVC objects

def dvc_object_roots(root: Path) -> list[Path]:
    """Where DVC keeps objects for this repo: the local cache and, when local, the default remote."""
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    try:
        repo = Repo(str(root))
    except NotDvcRepoError:  # no DVC here: every DVC object is then reported missing, not a crash
        return []
    try:
        roots = [Path(repo.cache.local.path)]
        name = repo.config["core"].get("remote")
        url = repo.config["remote"].get(name, {}).get("url") if name else None
        if url and "://" not in str(url):
            roots.append(Path(url) / "files" / "md5")
        return roots
    finally:
        repo.close()


def _find_object(md5: str, roots: list[Path]) -> Path | None:
    for base in roots:
        obj = base / md5[:2] / md5[2:]
        if obj.exists():
            return obj
    return None


def _intact_object(md5: str, roots: list[Path]) -> tuple[Path | None, Path | None]:
    """(the intact copy, or the altered copy): the cache first, the remote only when the cache has none.
    An altered copy is reported even if another is intact: `dvc checkout` would restore the altered one."""
    for base in roots:
        obj = base / md5[:2] / md5[2:]
        if obj.exists():
            return (obj, None) if md5_file(obj) == md5.removesuffix(".dir") else (None, obj)
    return None, None


def check_dvc_object(md5: str, roots: list[Path]) -> tuple[str, str, list[dict]]:
    """Re-hash a DVC object (a file, or a .dir listing and every file in it), each file in the cache,
    else in the remote: a file evicted from the cache but intact in the remote is fine."""
    obj, altered = _intact_object(md5, roots)
    if obj is None:
        if altered is not None:
            return "altered", f"{altered} no longer matches md5 {md5}", []
        return "missing", f"DVC object {md5} is in neither the cache nor the remote", []
    if not md5.endswith(".dir"):
        return "ok", f"md5 re-checked in {obj.parent.parent}", []
    try:
        entries = json.loads(obj.read_text(encoding="utf-8"))
        pairs = [(str(e["relpath"]), str(e["md5"])) for e in entries]
    except (ValueError, KeyError, TypeError):
        return "altered", f"directory listing {obj} is malformed", []
    for relpath, file_md5 in pairs:
        found, bad = _intact_object(file_md5, roots)
        if found is None:
            if bad is not None:
                return "altered", f"{relpath}: content no longer matches md5 {file_md5}", entries
            return "missing", f"{relpath} (md5 {file_md5}) is in neither the cache nor the remote", entries
    return "ok", f"{len(pairs)} files re-hashed (cache, else remote)", entries


# ---------------------------------------------------------------- the chain

def _link(step: str, status: str, detail: str, **data: Any) -> Link:
    return {"step": step, "status": status, "detail": detail, **data}


def _stage_out(lock: dict, stage: str, path: str) -> str | None:
    for item in lock.get("stages", {}).get(stage, {}).get("outs", []):
        if item.get("path") == path:
            return item.get("md5")
    return None


def _stage_dep(lock: dict, stage: str, path: str) -> str | None:
    for item in lock.get("stages", {}).get(stage, {}).get("deps", []):
        if item.get("path") == path:
            return item.get("md5")
    return None


def resolve_version(store: registry.Store, alias: str | None, version: int | None) -> int:
    entries = registry.read_ledger(store)
    if version is not None:
        if version not in registry.registered(entries):
            raise InputError(f"no registered version {version}")
        return version
    current = registry.aliases(entries)
    if alias not in current:
        raise InputError(f"alias '{alias}' is not set (aliases: {', '.join(sorted(current)) or 'none'})")
    return current[alias]


def _guarded(step: str, build, *args) -> Link:
    """A link whose evidence is malformed is `altered` (named), never a crash."""
    try:
        return build(*args)
    except Exception as err:  # malformed JSON/YAML, wrong types, missing keys in stored evidence
        return _link(step, "altered", f"evidence unreadable or malformed ({type(err).__name__}: "
                     f"{str(err).splitlines()[0][:160] if str(err) else ''})")


ANSWERS = "evaluate_predictions.parquet"  # the evaluation's per-example results, when kept as evidence
ANSWER_COLUMNS = ("prompt", "reference", "candidate_answer", "base_answer")


def stored_evidence(params: Params, model: str, version: int, name: str, root: Path = Path(".")) -> bytes | None:
    """One evidence file stored beside a registered version, only if its sha256 is the (ledger-checked)
    manifest's; None when the version kept no such file."""
    store = access.model_store(params, model, root)
    entries = registry.read_ledger(store)
    if version not in registry.registered(entries):
        raise InputError(f"no registered version {version}")
    manifest = registry.read_manifest(store, version, registry.registered(entries)[version])
    return registry.read_evidence(store, version, name, manifest)


def pictures(params: Params, model: str, version: int, root: Path = Path(".")) -> dict[str, Any]:
    """What the version page draws: the training loss curve (DVCLive's `metrics_loss.tsv`) as SVG coordinates and
    the confusion matrix (`evaluate_confusion.csv`) as counts, from sha-checked evidence; a picture
    whose evidence was not kept is absent, an altered one is named in `errors`."""
    import io

    import pandas as pd

    out: dict[str, Any] = {"errors": []}
    # DVCLive's loss series (`metrics_loss.tsv`); versions trained before DVCLive kept `train_loss.csv`
    for name, key, sep in (("metrics_loss.tsv", "loss", "\t"), ("train_loss.csv", "loss", ","),
                           ("evaluate_confusion.csv", "confusion", ",")):
        if key in out:
            continue
        try:
            raw = stored_evidence(params, model, version, name, root)
            frame = pd.read_csv(io.BytesIO(raw), sep=sep) if raw else None
        except (CheckFailed, ValueError) as err:
            out["errors"].append(str(err))
            continue
        if frame is None or frame.empty:
            continue
        out[key] = _loss_svg(frame) if key == "loss" else _matrix(frame)
    return out


def _loss_svg(frame, width: int = 560, height: int = 200, pad: int = 36) -> dict[str, Any]:
    steps, loss = frame["step"].astype(float).tolist(), frame["loss"].astype(float).tolist()
    lo, hi, last = min(loss), max(loss), max(steps) or 1.0
    span = (hi - lo) or 1.0
    pts = [(pad + s / last * (width - 2 * pad), height - pad - (v - lo) / span * (height - 2 * pad))
           for s, v in zip(steps, loss)]
    return {"width": width, "height": height, "pad": pad, "lo": lo, "hi": hi, "steps": int(last),
            "points": " ".join(f"{x:.1f},{y:.1f}" for x, y in pts), "n": len(pts)}


def _matrix(frame) -> dict[str, Any]:
    labels = sorted(set(frame["actual"]) | set(frame["predicted"]))
    counts = frame.groupby(["actual", "predicted"]).size().to_dict()
    rows = [[int(counts.get((a, p), 0)) for p in labels] for a in labels]
    top = max((max(r) for r in rows), default=1) or 1
    return {"labels": labels, "rows": rows, "top": top}


def answers(params: Params, model: str, version: int, root: Path = Path("."), limit: int = 100) -> list[dict] | None:
    """What a registered version said on its evaluation's test rows, for a reviewer to read: prompt,
    reference, its answer and per-example scores (and the base model's answer), from the evidence
    stored beside the version and only if its sha256 is the one in the (ledger-checked) manifest.
    None when the version kept no answers (a classifier, or `lineage.evidence` without them)."""
    import io

    import pandas as pd

    raw = stored_evidence(params, model, version, ANSWERS, root)
    if raw is None:
        return None
    frame = pd.read_parquet(io.BytesIO(raw))
    if "candidate_answer" not in frame.columns:
        return None
    scores = [c for c in frame.columns if c.startswith("candidate_") and c != "candidate_answer"]
    keep = [c for c in ANSWER_COLUMNS if c in frame.columns] + scores
    return frame[keep].head(limit).astype(object).where(frame[keep].head(limit).notna(), None).to_dict("records")


def trace(params: Params, model: str, alias: str | None = "champion", version: int | None = None,
          root: Path = Path(".")) -> dict[str, Any]:
    """Walk and re-verify the chain of one registered version."""
    store = access.model_store(params, model, root)
    number = resolve_version(store, alias, version)
    entries = registry.read_ledger(store)
    vdir = store.path("versions", f"v{number:04d}")
    problems = [p for p in registry.verify(store) if p.startswith((f"v{number}:", "ledger", "alias"))]
    try:
        manifest = registry.read_manifest(store, number, registry.registered(entries)[number])
    except CheckFailed as err:
        links = [_link("registry", "altered", "; ".join(problems) or str(err), version=number)]
        return {"model": model, "alias": alias if version is None else None, "version": number,
                "verified": False, "links": links}
    stored = {name: store.fs.cat_file(f"{vdir}/evidence/{name}") for name in manifest.get("evidence", {})
              if store.fs.exists(f"{vdir}/evidence/{name}")}
    links: list[Link] = [_guarded("registry", _served, number, alias, entries, manifest, problems)]
    links.append(_guarded("gate", _gate, manifest, stored))
    links.append(_guarded("evaluation", _evaluation, manifest, stored))
    links.append(_guarded("training", _training, manifest, stored, root))
    try:
        lock = yaml.safe_load(stored["dvc.lock"]) if "dvc.lock" in stored else {}
        lock = lock if isinstance(lock, dict) else {}
    except yaml.YAMLError:
        lock = {}
    roots = dvc_object_roots(root)
    links.append(_guarded("prepared", _prepared, params, lock, roots))
    try:
        raw_md5, raw_link = _raw(params, stored, lock, roots)
    except Exception as err:
        raw_link = _link("raw", "altered", f"evidence unreadable or malformed ({type(err).__name__})")
    links.append(_guarded("validation", _validation, stored, raw_link))
    links.append(raw_link)
    links.append(_guarded("evidence_branch", _evidence_branch, entries, number, stored, root))
    links.append(_guarded("orchestration", _orchestration, manifest, entries, number))
    return {"model": model, "alias": alias if version is None else None, "version": number,
            "verified": all(link["status"] == "ok" for link in links), "links": links}


def _evidence_branch(entries: list, number: int, stored: dict[str, bytes], root: Path) -> Link:
    """The lineage commit anchored in the ledger must still be on its branch and hold the same dvc.lock."""
    recorded = registry.lineage_commits(entries, number)
    if not recorded:
        return _link("evidence_branch", "ok", "no lineage commit recorded for this version "
                     "(promoted outside a lifecycle run)")
    entry = recorded[-1]
    commit, branch = str(entry["lineage_commit"]), str(entry["lineage_branch"])

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=root, capture_output=True)

    data = {"commit": commit, "branch": branch}
    if git("cat-file", "-e", f"{commit}^{{commit}}").returncode != 0:
        return _link("evidence_branch", "missing", f"lineage commit {commit[:12]} is not in this repository", **data)
    if git("rev-parse", "--verify", "--quiet", f"refs/heads/{branch}").returncode != 0:
        return _link("evidence_branch", "missing", f"git branch {branch!r} is gone (deleted)", **data)
    if git("merge-base", "--is-ancestor", commit, f"refs/heads/{branch}").returncode != 0:
        return _link("evidence_branch", "altered", f"commit {commit[:12]} is no longer on branch {branch!r} "
                     "(moved or rewritten)", **data)
    seen = _ledger_seen(git("show", f"{commit}:lineage/run.json").stdout)
    lost = _head_lost(entries, seen) if seen else None
    if lost:
        return _link("evidence_branch", "altered", f"the ledger is not the one lineage commit {commit[:12]} saw: "
                     + (f"it has {len(entries)} entries, the commit saw {seen['seq']} (deleted)"
                        if lost == "deleted" else f"its entry {seen['seq']} was rewritten"), **data)
    lock = git("show", f"{commit}:./dvc.lock")  # ./: the dvc.lock of the model folder `root` (git resolves it)
    if "dvc.lock" in stored and (lock.returncode != 0 or lock.stdout != stored["dvc.lock"]):
        return _link("evidence_branch", "altered", f"dvc.lock in commit {commit[:12]} differs from the one "
                     "stored with the version", **data)
    return _link("evidence_branch", "ok", f"commit {commit[:12]} is on branch {branch!r} with the same dvc.lock",
                 **data)


def _head_lost(entries: list, head: dict) -> str | None:
    """Whether a ledger head recorded elsewhere is still in the ledger: None, "deleted" or "rewritten"."""
    if len(entries) < head["seq"]:
        return "deleted"
    return "rewritten" if entries[head["seq"] - 1]["hash"] != head["hash"] else None


def _ledger_seen(run_json: bytes) -> dict | None:
    """The ledger head a lineage commit recorded (`ledger_head` in its lineage/run.json), if any."""
    try:
        head = json.loads(run_json).get("ledger_head") if run_json else None
    except (ValueError, AttributeError):
        return None
    return head if isinstance(head, dict) and isinstance(head.get("seq"), int) and head["seq"] >= 1 else None


def _served(number: int, alias: str | None, entries: list, manifest: dict, problems: list[str]) -> Link:
    reg = registry.registered(entries)[number]
    if problems:
        return _link("registry", "altered", "; ".join(problems), version=number)
    return _link("registry", "ok", f"v{number}: ledger chain, manifest sha256 and {len(manifest['files'])} "
                 "served files re-hashed", version=number, alias=alias, manifest_sha256=reg["manifest_sha256"],
                 candidate_hash=manifest["candidate_hash"], adapter_sha256=manifest.get("adapter_sha256"),
                 created_at=manifest.get("created_at"))


def _gate(manifest: dict, stored: dict[str, bytes]) -> Link:
    if "gate_decision.json" not in stored:
        return _link("gate", "missing", "no gate decision stored with this version")
    decision = json.loads(stored["gate_decision.json"])
    if decision != manifest.get("gate_decision"):
        return _link("gate", "altered", "stored decision differs from the one in the manifest")
    if decision.get("candidate_hash") != manifest["candidate_hash"]:
        return _link("gate", "altered", "the decision is for another candidate")
    if decision.get("passed") is not True:
        return _link("gate", "altered", "the stored decision did not pass, yet the version was promoted")
    return _link("gate", "ok", f"passed {len(decision['rules'])} rules for candidate {decision['candidate_hash'][:12]}",
                 decided_at=decision.get("decided_at"), champion_version=decision.get("champion_version"),
                 rules=[{k: r.get(k) for k in ("rule", "passed", "measured", "threshold")} for r in decision["rules"]])


def _evaluation(manifest: dict, stored: dict[str, bytes]) -> Link:
    if "evaluate_metrics.json" not in stored:
        return _link("evaluation", "missing", "no evaluation metrics stored with this version")
    metrics = json.loads(stored["evaluate_metrics.json"])
    if metrics.get("candidate") != manifest.get("metrics"):
        return _link("evaluation", "altered", "stored metrics differ from the manifest's")
    shown = {k: v for k, v in (metrics.get("candidate") or {}).items() if isinstance(v, (int, float))}
    return _link("evaluation", "ok", "metrics match the manifest", metrics=shown)


def _training(manifest: dict, stored: dict[str, bytes], root: Path) -> Link:
    from pipelines.core.hashing import content_hash
    from pipelines.training.modeling import resolve_base

    data = {"base_model": manifest.get("base_model"), "base_hash": manifest.get("base_hash"),
            "git_commit": manifest.get("git_commit"), "params": manifest.get("params"),
            "data_version": manifest.get("data_version")}
    lock_sha = manifest.get("dvc_lock_sha256")
    if "dvc.lock" not in stored:
        return _link("training", "missing", "no dvc.lock stored with this version", **data)
    if lock_sha and sha256_bytes(stored["dvc.lock"]) != lock_sha:
        return _link("training", "altered", "stored dvc.lock differs from the one hashed at promotion", **data)
    try:
        base = resolve_base(manifest["base_model"])
    except Exception as err:  # the base model is gone from this machine
        return _link("training", "missing", f"base model not available to re-hash: {err}", **data)
    if content_hash(base) != manifest.get("base_hash"):
        return _link("training", "altered", f"base model {manifest['base_model']} no longer matches its sha256", **data)
    commit = manifest.get("git_commit")
    found = commit and subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=root,
                                      capture_output=True).returncode == 0
    if not found:
        return _link("training", "missing", f"git commit {commit} not in this repository", **data)
    return _link("training", "ok", "base model re-hashed; git commit present; dvc.lock matches", **data)


def _prepared(params: Params, lock: dict, roots: list[Path]) -> Link:
    md5 = _stage_out(lock, "prepare", params.prepare.output_dir)
    if not md5:
        return _link("prepared", "missing", f"dvc.lock has no {params.prepare.output_dir} output")
    status, detail, _ = check_dvc_object(md5, roots)
    return _link("prepared", status, detail, path=params.prepare.output_dir, md5=md5)


def _raw(params: Params, stored: dict[str, bytes], lock: dict, roots: list[Path]) -> tuple[str | None, Link]:
    if "raw.dvc" not in stored:
        return None, _link("raw", "missing", "no .dvc file of the raw data stored with this version")
    outs = (yaml.safe_load(stored["raw.dvc"]) or {}).get("outs", [{}])
    md5 = outs[0].get("md5")
    used = _stage_dep(lock, "validate", params.data.raw)
    if used and used != md5:
        return md5, _link("raw", "altered", "validate ran on other raw data than the stored .dvc file names")
    status, detail, entries = check_dvc_object(md5, roots) if md5 else ("missing", "no md5", [])
    if md5 and not md5.endswith(".dir"):
        entries = [{"relpath": Path(params.data.raw).name, "md5": md5}]
    return md5, _link("raw", status, detail, path=params.data.raw, md5=md5,
                      files=[{"path": e["relpath"], "md5": e["md5"]} for e in entries])


def _validation(stored: dict[str, bytes], raw: Link) -> Link:
    if "validate_result.json" not in stored:
        return _link("validation", "missing", "no GX validation result stored with this version")
    result = json.loads(stored["validate_result.json"])
    data = {"verdict": result.get("status"), "success": result.get("success"), "rows": result.get("rows"),
            "quarantined_rows": result.get("quarantined_rows"), "gx_version": result.get("gx_version"),
            "failed_checks": result.get("failed_checks")}
    if result.get("success") is not True:
        return _link("validation", "altered", f"validation status is {result.get('status')!r}", **data)
    raw_files = {f["path"]: f["md5"] for f in raw.get("files", [])}
    checked = {name: f.get("md5") for name, f in result.get("dataset", {}).get("files", {}).items()}
    mismatch = sorted(set(checked) ^ set(raw_files)) + [n for n, md5 in checked.items()
                                                         if n in raw_files and raw_files[n] != md5]
    if raw_files and mismatch:
        return _link("validation", "altered", f"validated files differ from the raw snapshot: {mismatch}", **data)
    return _link("validation", "ok", f"GX verdict {result.get('status')} on {len(checked)} files matching the "
                 "raw snapshot", **data)


def _orchestration(manifest: dict, entries: list, number: int) -> Link:
    entry = next((e for e in entries if e.get("registered") and e["registered"]["version"] == number), {})
    run = manifest.get("run") or {}
    data = {"dag_id": run.get("dag_id"), "run_id": run.get("run_id"), "task_id": run.get("task_id"),
            "triggered_by": manifest.get("triggered_by"), "approved_by": entry.get("approved_by"),
            "reason": entry.get("reason")}
    where = f"Airflow {run['dag_id']} run {run['run_id']}" if run.get("dag_id") else "the pipelines CLI (no Airflow run)"
    return _link("orchestration", "ok", f"promoted by {where}, triggered by {manifest.get('triggered_by')}", **data)


# ---------------------------------------------------------------- output

# The version page draws the chain in the order data flowed (trace() walks it backwards).
FLOW = ("raw", "validation", "prepared", "training", "evaluation", "gate", "registry", "orchestration",
        "evidence_branch")
HASH_KEYS = ("md5", "sha256", "hash", "commit")


def _hashes(link: dict[str, Any]) -> list[tuple[str, str]]:
    return [(k, str(v)) for k, v in link.items() if isinstance(v, str) and any(h in k for h in HASH_KEYS) and v]


def show_value(value: Any) -> str:
    """A measured value or threshold for a person: floats to 4 digits, dicts as 'key value' pairs, hashes short."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {show_value(v)}" for k, v in value.items())
    text = "" if value is None else str(value)
    return text[:12] if len(text) >= 40 and all(c in "0123456789abcdef" for c in text) else text


def render_html(chain: dict[str, Any], said: list[dict] | None = None, drawn: dict[str, Any] | None = None) -> str:
    """A self-contained page: the verdict as a banner, the chain as linked steps (short hashes, each
    step's evidence one click away), the gate's checklist, the headline metrics, then (when given)
    what the version said on its test rows (Jinja2, every value escaped)."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("pipelines.registry", "templates"), autoescape=True)
    extras = lambda link: json.dumps({k: v for k, v in link.items() if k not in ("step", "status", "detail")},  # noqa: E731
                                     indent=1, default=str)
    links = {link["step"]: link for link in chain["links"]}
    flow = [links[s] for s in FLOW if s in links] + [link for link in chain["links"] if link["step"] not in FLOW]
    gate = links.get("gate") or {}
    rules = gate.get("rules") if isinstance(gate.get("rules"), list) else []
    metrics = (links.get("evaluation") or {}).get("metrics")
    metrics = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)} \
        if isinstance(metrics, dict) else {}
    broken = [f"{link['step']}: {link['detail']}" for link in chain["links"] if link["status"] != "ok"]
    return env.get_template("lineage.html").render(chain=chain, extras=extras, said=said or [], flow=flow,
                                                   hashes=_hashes, rules=rules, metrics=metrics, show=show_value,
                                                   broken=broken, drawn=drawn or {})
