"""The steps of a model's lifecycle DAG, one function per task (no Airflow imports here).

Every step takes `Shared` (the git remote, the DVC remote, this worker's cache and scratch) and the
run's pointer (`RunRef`, by XCom), works in a disposable checkout of the run's commit and returns the
new pointer; no step reads a file another task left on a local disk or writes into the user's checkout.
- `start` [snapshot]: a checkout of the remote's HEAD; the run's form values re-checked and applied to
  the checkout's params file; the chosen dataset copied in, `dvc add`ed and pushed; the registry made.
  The first commit of `refs/runs/<model>/<run>`.
- `run_stage` [validate, prepare, train, evaluate]: `dvc repro --pull --single-item <stage>` (inputs
  pulled from the DVC remote, unchanged stages restored from DVC's run-cache on any worker), outputs
  and run-cache pushed, dvc.lock committed. `train`'s checkpoints go to shared storage as written.
- `gate` [gate]: the gate stage; a rejection is an outcome (returned), not an error.
- `promote`, `notify_serving`, `record` [lineage]: registry, serving confirmation, the run's evidence
  committed to the `lineage` branch (a compare-and-swap push: runs of other models may race).
- `fail`, `finish`: the run's record says where it stopped / that it ended.
Exit 1/2 of a stage's CLI become `CheckFailed`/`ConfigError` (deterministic: no retry); git, DVC
and disk failures a `TransientError` (retried).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from pipelines.core.config import Params, check_model_name, load_params
from pipelines.core.errors import CheckFailed, ConfigError, InputError, PipelineError
from pipelines.orchestration import checkpoints, gitops, records
from pipelines.orchestration import openlineage as ol
from pipelines.orchestration.gitops import TransientError
from pipelines.orchestration.runconf import apply_overrides, check_conf, overrides
from pipelines.orchestration.runspace import RunRef, Shared, TaskSpace, run_ref_name, stage_error, task_space
from pipelines.registry import signing
from pipelines.registry import store as registry
from pipelines.registry.anchor import GitAnchor

STAGES = ("validate", "prepare", "train", "evaluate", "gate")


def _params(ws: TaskSpace) -> Params:
    return load_params(ws.project / "params.yaml")


def _dataset_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")) if path.is_dir() else []


def _copy_dataset(source: str, target: Path) -> None:
    """The chosen dataset into the workspace: a local file/directory, or any fsspec URL."""
    if "://" in source:
        from fsspec.core import url_to_fs

        fs, path = url_to_fs(source)
        if not fs.exists(path):
            raise InputError(f"no data at {source}")
        fs.get(path, str(target), recursive=True)
        return
    src = Path(source)
    if src.is_dir():
        shutil.copytree(src, target, ignore=shutil.ignore_patterns(".*"))
    elif src.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)


# ---------------------------------------------------------------- snapshot

def start(shared: Shared, project: str, model: str, raw_conf: dict[str, Any] | None,
          run: dict[str, Any]) -> dict[str, Any]:
    """Snapshot: the run's first commit (params applied, dataset DVC-tracked and pushed)."""
    check_model_name(model)
    ref = RunRef(model, project, run["run_id"], run_ref_name(model, run["run_id"]), "")
    taken = gitops.tip(shared.git_remote, ref.ref)
    if taken:  # a clear in the run re-runs its setup task: the snapshot is never taken twice, nor rewritten
        return _snapshot_taken(shared, replace(ref, commit=taken))
    with task_space(shared, ref, start_ref="HEAD") as ws:
        params = _params(ws)
        if params.registry.model_name != model:
            raise ConfigError(f"{project}/params.yaml: registry.model_name is {params.registry.model_name!r}, "
                              f"but the folder is {model!r}: they must match")
        conf = check_conf(raw_conf, params)
        changes = overrides(conf, params)
        where = params.lifecycle.datasets[conf.dataset]
        source = shared.resolve(project, where, f"dataset {conf.dataset!r}")
        rel = where if not ("://" in where or Path(where).is_absolute()) else f"data/datasets/{conf.dataset}"
        if rel != params.data.raw:
            changes.setdefault("data", {})["raw"] = rel
        store = _writer_store(shared, ws, params, model)
        for key in ("root", "trusted_keys_file", "signing_key_file"):  # the run's params name the registry
            given = getattr(params.registry, key)                      # (and its keys) every worker uses
            where = shared.resolve(project, os.path.expanduser(given), f"registry.{key}") if given else given
            if where != given:
                changes.setdefault("registry", {})[key] = where
        registry.init(store, by=run.get("triggered_by"))
        champ = registry.aliases(registry.read_ledger(store)).get("champion")
        if champ != params.evaluate.compare_with:  # this run compares with today's champion, whatever happens meanwhile
            changes.setdefault("evaluate", {})["compare_with"] = champ
        apply_overrides(ws.project / "params.yaml", changes)
        params = _params(ws)
        target = ws.project / rel
        shutil.rmtree(target, ignore_errors=True)
        _copy_dataset(source, target)
        files = _dataset_files(target)
        if not files:
            raise InputError(f"dataset {conf.dataset!r}: no data at {source}")
        code, tail = ws.stream([sys.executable, "-m", "pipelines.orchestration.dvc_task", str(ws.project), "--add", rel])
        if code != 0:
            raise TransientError(f"snapshot of {conf.dataset!r}: {tail[-1] if tail else f'exited with {code}'}")
        md5 = (yaml.safe_load((ws.project / f"{rel}.dvc").read_text(encoding="utf-8")) or {})["outs"][0]["md5"]
        snapshot = {"dataset": conf.dataset, "source": source, "path": rel, "md5": md5,
                    "files": [str(f.relative_to(target)) if f != target else f.name for f in files],
                    "overrides": {k: v for k, v in changes.items() if k not in ("registry", "evaluate")},
                    "champion": champ,
                    "require_approval": conf.require_approval, "git_base": ws.run.commit}
        records.update(ws.root, run_id=run["run_id"], model=model, project=project, run=run, snapshot=snapshot,
                       started_at=time.time())
        new = ws.commit(f"{model} run {run['run_id']}: snapshot of {conf.dataset} ({md5[:12]})",
                        force=[f"{project}/{rel}.dvc", f"{project}/params.yaml"])
        io = ol.snapshot_io(params, ws.project, project, shared.git_remote)
    return {**new.to_xcom(), "snapshot": snapshot, "require_approval": conf.require_approval, "lineage_io": io}


def _snapshot_taken(shared: Shared, run: RunRef) -> dict[str, Any]:
    """The run's snapshot, taken before: its pointer at the tip of the run's ref (history only grows). The
    run goes on: where it stopped before is history (in the ref), no longer the record's outcome."""
    with task_space(shared, run, dvc=False) as ws:
        rec = records.load(ws.root)
        snapshot = rec.get("snapshot") or {}
        if rec.get("failed") or rec.get("finished"):
            records.update(ws.root, failed=None, finished=None)
            run = ws.commit(f"{run.model} run {run.run_id}: resumed (tasks cleared)")
        io = ol.snapshot_io(_params(ws), ws.project, run.project, shared.git_remote)
    print(f"the snapshot of run {run.run_id} was taken before ({snapshot.get('dataset')}, "
          f"{str(snapshot.get('md5'))[:12]}): kept; the run goes on from {run.commit[:12]}", flush=True)
    return {**run.to_xcom(), "snapshot": snapshot, "require_approval": bool(snapshot.get("require_approval")),
            "lineage_io": io}


def _writer_store(shared: Shared, ws: TaskSpace, params: Params, model: str) -> registry.Store:
    """The registry as a lifecycle writer opens it: its root and key files as every worker sees them, the
    signing key this worker holds (file or env var), and the heads kept in the shared git remote."""
    rp = params.registry
    where = {key: shared.resolve(ws.run.project, os.path.expanduser(value), f"registry.{key}")
             for key in ("root", "signing_key_file", "trusted_keys_file") if (value := getattr(rp, key))}
    rp = rp.model_copy(update=where)
    anchor = GitAnchor(ws.root, remote=shared.git_remote)
    store = registry.open_store(rp.root, model, signing.keys_for(rp, dict(os.environ)), anchor)
    anchor.fetch(model, store.location)
    return store


# ---------------------------------------------------------------- stages

def _repro(ws: TaskSpace, stage: str) -> dict[str, Any]:
    """`dvc repro --pull` one stage in the workspace, outputs and run-cache pushed after."""
    sync = None
    if stage == "train":
        params = _params(ws)
        local = ws.project / params.train.checkpoint_dir
        url = checkpoints.store_url(ws.remote_url, ws.run.model, ws.run.ref.rsplit("/", 1)[-1])
        restored = checkpoints.restore(url, local)
        if restored:
            print(f"resuming from shared checkpoints: {', '.join(restored)}", flush=True)
        sync = checkpoints.CheckpointSync(local, url)
    t0 = time.perf_counter()
    code, tail = ws.stream([sys.executable, "-m", "pipelines.orchestration.dvc_task", str(ws.project), stage],
                           during=sync.sync if sync else None)
    if code != 0:
        raise stage_error(stage, code, tail)
    ran = not any(("is cached - skipping run" in ln or "didn't change, skipping" in ln) for ln in tail)
    if sync is not None:
        sync.clear()
    # inputs pulled, the stage run (or restored from the run-cache), outputs and run-cache pushed
    return {"stage": stage, "ran": ran, "seconds": round(time.perf_counter() - t0, 2)}


def run_stage(shared: Shared, run: RunRef, stage: str) -> dict[str, Any]:
    """One DVC stage of the run; returns the new run pointer with whether it ran and for how long."""
    if stage not in STAGES:
        raise ConfigError(f"unknown stage {stage!r}; one of {', '.join(STAGES)}")
    t0 = time.perf_counter()
    with task_space(shared, run) as ws:
        checkout = round(time.perf_counter() - t0, 2)
        outcome = _repro(ws, stage)
        t1 = time.perf_counter()
        stages = {**records.load(ws.root).get("stages", {}), stage: {**outcome, "checkout_seconds": checkout}}
        records.update(ws.root, stages=stages)
        new = ws.commit(f"{run.model} run {run.run_id}: {stage} ({'ran' if outcome['ran'] else 'cached'})")
        outcome |= {"checkout_seconds": checkout, "commit_seconds": round(time.perf_counter() - t1, 2)}
        io = ol.stage_io(_params(ws), ws.project, run.project, shared.git_remote, stage)
    return {**new.to_xcom(), **outcome, "lineage_io": io}


def gate_summary(params: Params, project: Path) -> dict[str, Any]:
    path = project / params.gate.decision_path
    try:
        decision = yaml.safe_load(path.read_text(encoding="utf-8"))
        failed = [r for r in decision["rules"] if not r["passed"]]
        return {"passed": decision["passed"] is True, "candidate": decision["candidate_hash"],
                "champion_version": decision.get("champion_version"),
                "summary": f"{len(decision['rules']) - len(failed)}/{len(decision['rules'])} rules",
                "reasons": "; ".join(f"{r['rule']}: {r['detail']} (measured {r['measured']}, threshold {r['threshold']})"
                                     for r in failed) or "all rules passed"}
    except (OSError, TypeError, KeyError, yaml.YAMLError) as err:
        raise CheckFailed(f"gate: the decision {params.gate.decision_path} is unreadable ({type(err).__name__})") from None


def gate(shared: Shared, run: RunRef) -> dict[str, Any]:
    """The gate stage (`pipelines gate --exit-zero`: a rejection is its decision, not a failure)."""
    with task_space(shared, run) as ws:
        outcome = _repro(ws, "gate")  # run or restored from the run-cache: the decision is checked out either way
        summary = gate_summary(_params(ws), ws.project)
        stages = {**records.load(ws.root).get("stages", {}), "gate": outcome}
        records.update(ws.root, stages=stages, gate=summary)
        verdict = "passed" if summary["passed"] else "rejected"
        new = ws.commit(f"{run.model} run {run.run_id}: gate {verdict} ({summary['summary']})")
        io = ol.stage_io(_params(ws), ws.project, run.project, shared.git_remote, "gate")
    return {**new.to_xcom(), **summary, "lineage_io": io}


# ---------------------------------------------------------------- registry, serving, lineage

def _pull(ws: TaskSpace, params: Params, paths: list[str]) -> None:
    """Fetch these outputs of earlier tasks from the DVC remote (those DVC tracks)."""
    lock = yaml.safe_load((ws.project / "dvc.lock").read_text(encoding="utf-8")) if (ws.project / "dvc.lock").exists() else {}
    outs = {o["path"] for s in (lock or {}).get("stages", {}).values() for o in s.get("outs", [])}
    wanted = sorted({p for p in paths if p in outs or any(p.startswith(o.rstrip("/") + "/") for o in outs)})
    if wanted:
        ws.dvc("pull", *wanted)


def _evidence(ws: TaskSpace, params: Params) -> list[str]:
    from pipelines.registry.audit import evidence_paths

    paths = list(evidence_paths(params).values())
    _pull(ws, params, paths)
    return paths


def _trained_tokens(train_metrics: Path) -> int | None:
    """The tokens the run's training step went through (train's report), None when it did not train."""
    try:
        tokens = json.loads(train_metrics.read_text(encoding="utf-8")).get("train_tokens")
    except (OSError, ValueError):
        return None
    return int(tokens) if isinstance(tokens, (int, float)) else None


def _already_champion(store: registry.Store, gate: dict[str, Any]) -> dict[str, Any] | None:
    """When this run's gated candidate (its record, written by the gate task) already is the champion,
    there is nothing to register or move, nor to pull: say so."""
    entries = registry.read_ledger(store)
    champ = registry.aliases(entries).get("champion")
    if champ is None or not gate.get("passed") or registry.registered(entries)[champ]["candidate_hash"] != gate.get("candidate"):
        return None
    print(f"candidate {str(gate['candidate'])[:12]} already is champion v{champ}; nothing to do", flush=True)
    return {"version": champ, "changed": False}


def _at_tip(shared: Shared, run: RunRef, info: dict[str, Any]) -> RunRef:
    """This run's pointer at the tip of its own ref in the git remote (where the approval step commits a
    person's answer), never another run's: the pointer an XCom carried must be this run's ref."""
    if run.ref != run_ref_name(run.model, str(info.get("run_id"))):
        raise CheckFailed(f"the run pointer names {run.ref}, not this run's ref; nothing done")
    return replace(run, commit=gitops.tip(shared.git_remote, run.ref) or run.commit)


def _descends(ws: TaskSpace, commit: str) -> None:
    if not gitops.is_ancestor(ws.root, commit, "HEAD"):
        raise CheckFailed(f"the run's ref no longer holds commit {commit[:12]} (rewritten); nothing done")


def record_review(shared: Shared, run: RunRef, info: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
    """Keep a person's answer to the approval step (Airflow's HITL response: who, what, when) in the run's
    record, in git: `promote` and `lineage` read it there, never from an XCom that anyone allowed to use
    Airflow's API could write. Called only when Airflow hands the approval step an answer."""
    said = records.review(answer)
    if said is None:
        raise CheckFailed("the approval step resumed without an answer; nothing recorded")
    at = _at_tip(shared, run, info)
    with task_space(shared, at, dvc=False) as ws:
        _descends(ws, run.commit)
        records.update(ws.root, review=said)
        new = ws.commit(f"{run.model} run {run.run_id}: {said['decision']} by {said['by']}")
    return {**new.to_xcom(), "review": said}


def promote(shared: Shared, run: RunRef, info: dict[str, Any]) -> dict[str, Any]:
    """Register the candidate and make it champion, with its lineage evidence beside it; when the run asked
    for a person's approval, only with an "Approve" by an allowed approver recorded in the run's git ref."""
    from pipelines.registry import audit as lineage

    gated, run = run, _at_tip(shared, run, info)
    with task_space(shared, run) as ws:
        _descends(ws, gated.commit)
        params = _params(ws)
        approved_by = records.approved_by(records.load(ws.root), params.lifecycle.approvers)
        tp, proj = params.train, ws.project
        metrics = f"{params.evaluate.report_dir}/metrics.json"
        model = params.registry.model_name
        store = _writer_store(shared, ws, params, model)
        result = _already_champion(store, records.load(ws.root).get("gate") or {})
        if result is None:
            _pull(ws, params, [tp.output_dir, params.gate.decision_path, metrics,
                               *lineage.evidence_paths(params).values()])
            result = registry.promote(
                store, model, proj / tp.output_dir, proj / params.gate.decision_path, proj / metrics,
                by=info.get("triggered_by"), approved_by=approved_by,
                reason=f"{info.get('dag_id')} run {info.get('run_id')}: passed gate",
                evidence=lineage.evidence(params, proj), root=proj,
                run={"dag_id": info.get("dag_id"), "run_id": info.get("run_id"), "task_id": "promote"})
        if params.registry.gto_tags and result["changed"]:
            print("note: registry.gto_tags is not mirrored from task workspaces (git tags belong to the "
                  "user's repository); run `pipelines registry` by hand to mirror", flush=True)
        promotion = {"model": model, "version": result["version"], "changed": result["changed"],
                     "registered": result.get("registered", False), "approved_by": approved_by}
        gate = records.load(ws.root).get("gate") or {}
        records.update(ws.root, promotion=promotion)
        new = ws.commit(f"{model} run {run.run_id}: promoted v{result['version']}")
        entries = registry.read_ledger(store)
        reg = registry.registered(entries)[result["version"]]
        signed = next((e.get("signature") or {} for e in entries if (e.get("registered") or {}).get("version")
                       == result["version"]), {})
        io = ol.promote_io(params, proj, run.project, shared.git_remote, params.registry.root,
                           registry.read_manifest(store, result["version"], reg), reg["manifest_sha256"],
                           signed.get("key"))
    return {**new.to_xcom(), **promotion, "lineage_io": io, "champion": {  # the champion Asset event's metadata
        **promotion, "manifest_sha256": reg["manifest_sha256"], "candidate_hash": reg["candidate_hash"],
        "gate": gate.get("summary"), "run_id": run.run_id}}


def notify_serving(shared: Shared, run: RunRef, version: int) -> list[str]:
    """Confirm that each configured server answers with the new champion (they follow the alias)."""
    import httpx

    with task_space(shared, run, dvc=False) as ws:
        params = _params(ws)
    confirmed = []
    key = os.environ.get(params.lifecycle.serving_key_env)  # servers name their versions to a caller with a key
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    for url in params.lifecycle.serving_urls:
        deadline = time.monotonic() + params.lifecycle.serving_timeout_s
        seen = None
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                seen = httpx.get(f"{url.rstrip('/')}/readyz", headers=headers, timeout=5).headers.get("x-model-version")
                if seen == str(version):
                    confirmed.append(url)
                    break
            time.sleep(1)
        else:
            raise TransientError(f"{url} still serves v{seen}, not v{version}, after "
                                 f"{params.lifecycle.serving_timeout_s:.0f} s")
    if not params.lifecycle.serving_urls:
        print(f"no serving_urls configured; servers following '{params.serve.alias}' pick up v{version} "
              f"within serve.poll_seconds ({params.serve.poll_seconds} s)", flush=True)
    return confirmed


def record(shared: Shared, run: RunRef, info: dict[str, Any]) -> dict[str, Any]:
    """Commit the run's evidence to the lineage branch (compare-and-swap: other runs may push too), with
    the person's answer to the approval step when there was one (in the run's record since `record_review`)."""
    from pipelines.economics.cost import run_cost
    from pipelines.registry.evidence_branch import commit_run

    last, run = run, _at_tip(shared, run, info)
    with task_space(shared, run) as ws:
        _descends(ws, last.commit)
        params = _params(ws)
        files = [f"{run.project}/{p}" for p in _evidence(ws, params)]
        cp = params.cost
        compute = run_cost(records.load(ws.root).get("stages") or {},
                           (cp.train_on, cp.hardware[cp.train_on].usd_per_hour),
                           (cp.workers_on, cp.hardware[cp.workers_on].usd_per_hour))
        compute["trained_tokens"] = _trained_tokens(ws.project / params.train.report_dir / "metrics.json")
        rec = records.update(ws.root, compute=compute, failed=None)  # got here: a failed try before was retried
        branch = params.lineage.branch
        message = f"lineage: {run.model} {info.get('dag_id')} {run.run_id}\n\n{records.run_note(rec)}"
        store = _writer_store(shared, ws, params, run.model)
        head = registry.read_head(store)  # kept in git too: a rewritten or truncated ledger disagrees with it
        for _ in range(8):
            tip = gitops.fetch(ws.root, shared.git_remote, f"refs/heads/{branch}", into=f"refs/heads/{branch}")
            commit = commit_run(ws.root, branch, files, {**rec, "run": info, "ledger_head": head}, message)
            if gitops.push(ws.root, shared.git_remote, commit, f"refs/heads/{branch}", expect=tip or ""):
                break
        else:
            raise TransientError(f"the {branch} branch kept moving; will retry")
        promoted = rec.get("promotion")
        # anchor the commit in the ledger for auditors, for the version this run registered (a version
        # registered before and promoted again keeps the lineage commit of the run that trained it)
        if promoted and promoted.get("changed") and promoted.get("registered", True):
            registry.record_lineage_commit(store, promoted["version"], commit, branch,
                                           run=f"{info.get('dag_id')} run {run.run_id}", by=info.get("triggered_by"))
        rec = records.update(ws.root, lineage_commit=commit, lineage_branch=branch,
                             ledger_head=registry.read_head(store))  # after the anchor: on the run's ref
        new = ws.commit(f"{run.model} run {run.run_id}: lineage {commit[:12]}")
        read = ol.stage_io(params, ws.project, run.project, shared.git_remote, "gate")["outputs"] + (
            [ol.alias(params.registry.root, run.model, params.serve.alias, promoted["version"])] if promoted else [])
        io = ol.record_io(shared.git_remote, branch, commit, rec["ledger_head"], read)
    return {**new.to_xcom(), "lineage_commit": commit, "lineage_branch": branch, "note": rec["note"],
            "lineage_io": io}


# ---------------------------------------------------------------- other DAGs and run bookkeeping

def rollback(shared: Shared, project: str, model: str, to_version: int | None, reason: str,
             info: dict[str, Any]) -> dict[str, Any]:
    """Move `champion` back (to `previous`, or to `to_version`) with the reason in the ledger."""
    check_model_name(model)
    ref = RunRef(model, project, info.get("run_id", ""), "", "")
    with task_space(shared, ref, start_ref="HEAD", dvc=False) as ws:
        params = _params(ws)
        store = _writer_store(shared, ws, params, model)
        if not registry.read_ledger(store):
            raise InputError(f"model {model!r} has no registry at {store.base}")
        entry = registry.move_alias(store, model, "champion", to_version, by=info.get("triggered_by"),
                                    reason=reason, run=f"{info.get('dag_id')} run {info.get('run_id')}")
    return {"model": model, "champion": entry["version"], "ledger_seq": entry["seq"]}


def _amend_record(shared: Shared, model: str, project: str, run_id: str, message: str, **fields: Any) -> None:
    """Add fields to the record at the tip of the run's ref (nothing when the run has no ref yet)."""
    ref = run_ref_name(model, run_id)
    tip = gitops.tip(shared.git_remote, ref)
    if tip is None:
        return
    with task_space(shared, RunRef(model, project, run_id, ref, tip), dvc=False) as ws:
        records.update(ws.root, **fields)
        ws.commit(message)


def fail(shared: Shared, model: str, project: str, run_id: str, task: str, error: BaseException) -> None:
    """Note in the run's record where and why it stopped (the DAG run's note shows it). Never raises."""
    with contextlib.suppress(Exception):
        _amend_record(shared, model, project, run_id, f"{model} run {run_id}: stopped at {task}",
                      failed={"task": task, "error": str(error).splitlines()[0][:300]})


def finish(shared: Shared, model: str, project: str, run_id: str) -> bool:
    """Teardown: mark the run's record finished. Workspaces are already gone."""
    with contextlib.suppress(Exception):
        _amend_record(shared, model, project, run_id, f"{model} run {run_id}: finished", finished=True)
        return True
    return False


def new_drops(dataset_dir: Path, seen: dict[str, list[int]] | None) -> tuple[list[str], dict[str, list[int]]]:
    """Files of a dataset directory that are new or changed since `seen` (the last look's state, kept
    by the caller); returns them and the state to keep. The first look (`seen` None) reports nothing."""
    base = Path(dataset_dir)
    now = {str(p.relative_to(base)): [p.stat().st_size, p.stat().st_mtime_ns]
           for p in sorted(base.rglob("*")) if p.is_file() and not p.name.startswith(".")} if base.is_dir() else {}
    if seen is None:
        return [], now
    return sorted(name for name, sig in now.items() if seen.get(name) != sig), now


def is_deterministic(error: BaseException) -> bool:
    """Bad data, bad params, a failed check: retrying cannot help."""
    return isinstance(error, PipelineError)
