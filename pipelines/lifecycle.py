"""The steps of the `model_lifecycle` DAG, one function per task (no Airflow imports here).

Every function takes the project root (the DVC workspace) and works there:
- `start(root, conf, run)` [task snapshot]: re-checks the run's params form values against
  `params.yaml`'s `lifecycle` bounds, writes them into `params.yaml` for this run (comments kept; the
  original is restored by `finish`), `dvc add`s the chosen dataset and initialises the registry.
- `run_stage(root, stage)` [validate, prepare, train, evaluate]: `dvc repro --single-item <stage>`,
  streaming its output to the task log; exit 1/2 of the stage's CLI become `CheckFailed`/`ConfigError`
  (deterministic: no retry), anything else a `TransientError` (retry; `train` resumes from its checkpoint).
- `gate(root)` [gate]: the gate stage; a rejection is an outcome (returned), not an error.
- `promote(root, run, approved_by)` [promote], `notify_serving(root, version)` [notify_serving],
  `record(root, run, outcome)` [lineage]: registry, serving confirmation, lineage branch + `dvc push`.
- `finish(root)` [finish, a teardown]: restores `params.yaml`.
Each run keeps `.lifecycle/runs/<run_id>.json` (what happened, and a one-line note for the DAG run).
Runs of the DAG are serialised (`max_active_runs=1`): DVC allows one process per workspace.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any, Iterator

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from pipelines import registry
from pipelines.config import Params, load_params, parse_params
from pipelines.dataio import atomic_write_text, write_json
from pipelines.errors import CheckFailed, ConfigError, InputError, PipelineError

STATE = Path(".lifecycle")
BACKUP = STATE / "params.before-run.yaml"
STAGES = ("validate", "prepare", "train", "evaluate", "gate")


class TransientError(RuntimeError):
    """A failure worth retrying (a killed process, a busy DVC lock, a full disk freed later)."""


class RunConf(BaseModel):
    """The params form of a UI-triggered run; None = keep params.yaml's value."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: str = "default"
    base_model: str | None = None
    epochs: int | None = None
    learning_rate: float | None = None
    lora_rank: int | None = None
    min_accuracy: float | None = None
    min_macro_f1: float | None = None
    require_approval: bool = False


def check_conf(raw: dict[str, Any] | None, params: Params) -> RunConf:
    """Validate a run's values again (the DAG form did too): types, then params.yaml's bounds."""
    try:
        conf = RunConf.model_validate(raw or {})
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"run conf: unknown field '{field}'" if first["type"] == "extra_forbidden"
                          else f"run conf: invalid '{field}': {first['msg']}") from None
    lc = params.lifecycle
    low, high = lc.learning_rate_range
    problems = [
        (conf.dataset not in lc.datasets, f"dataset {conf.dataset!r} is not one of {sorted(lc.datasets)}"),
        (conf.base_model is not None and conf.base_model not in lc.base_models,
         f"base_model {conf.base_model!r} is not in the allowlist {list(lc.base_models)}"),
        (conf.epochs is not None and not 1 <= conf.epochs <= lc.max_epochs, f"epochs must be 1..{lc.max_epochs}"),
        (conf.learning_rate is not None and not low <= conf.learning_rate <= high,
         f"learning_rate must be within [{low}, {high}]"),
        (conf.lora_rank is not None and conf.lora_rank not in lc.lora_ranks, f"lora_rank must be one of {list(lc.lora_ranks)}"),
        (conf.min_accuracy is not None and not lc.gate_floor.min_accuracy <= conf.min_accuracy <= 1,
         f"min_accuracy must be within [{lc.gate_floor.min_accuracy}, 1]"),
        (conf.min_macro_f1 is not None and not lc.gate_floor.min_macro_f1 <= conf.min_macro_f1 <= 1,
         f"min_macro_f1 must be within [{lc.gate_floor.min_macro_f1}, 1]"),
    ]
    for bad, message in problems:
        if bad:
            raise ConfigError(f"run conf: {message}")
    return conf


def overrides(conf: RunConf, params: Params) -> dict[str, dict[str, Any]]:
    """The params.yaml changes a run asks for, only where they differ from the file."""
    tp, gp = params.train, params.gate
    wanted = {
        "data": {"raw": params.lifecycle.datasets[conf.dataset]},
        "train": {"base_model": conf.base_model, "epochs": conf.epochs, "learning_rate": conf.learning_rate},
        "gate": {"min_accuracy": conf.min_accuracy, "min_macro_f1": conf.min_macro_f1},
    }
    if conf.lora_rank is not None and conf.lora_rank != tp.lora.r:  # keep alpha / r, the LoRA scale
        wanted["train"]["lora"] = {"r": conf.lora_rank, "alpha": tp.lora.alpha * conf.lora_rank / tp.lora.r}
    current = {"data": params.data, "train": tp, "gate": gp}
    changes: dict[str, dict[str, Any]] = {}
    for section, values in wanted.items():
        for key, value in values.items():
            have = getattr(current[section], key)
            if key == "lora":
                have = have.model_dump()
                value = {**have, **value}
            if value is not None and value != have:
                changes.setdefault(section, {})[key] = value
    return changes


def apply_overrides(changes: dict[str, dict[str, Any]], path: Path = Path("params.yaml")) -> bool:
    """Write the run's values into params.yaml, comments kept, the original saved for `finish`."""
    if not changes:
        return False
    from ruamel.yaml import YAML

    rt = YAML()
    text = path.read_text(encoding="utf-8")
    doc = rt.load(text)
    for section, values in changes.items():
        for key, value in values.items():
            if isinstance(value, dict):
                for sub, v in value.items():
                    doc[section][key][sub] = v
            else:
                doc[section][key] = value
    from io import StringIO

    out = StringIO()
    rt.dump(doc, out)
    parse_params(yaml.safe_load(out.getvalue()), str(path))  # never write a params.yaml the stages reject
    STATE.mkdir(exist_ok=True)
    if not BACKUP.exists():
        atomic_write_text(BACKUP, text)
    atomic_write_text(path, out.getvalue())
    return True


def restore_params(path: Path = Path("params.yaml")) -> bool:
    """Put back the params.yaml a run started from (also after a killed run); True if it did."""
    if not BACKUP.exists():
        return False
    atomic_write_text(path, BACKUP.read_text(encoding="utf-8"))
    BACKUP.unlink()
    return True


@contextlib.contextmanager
def _in(root: Path | str) -> Iterator[None]:
    before = Path.cwd()
    os.chdir(root)
    try:
        yield
    finally:
        os.chdir(before)


def _env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "DVC_NO_ANALYTICS": "1", "GX_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1"}


def dvc(*args: str) -> str:
    """Run a `dvc` command in the current directory; its stdout, or TransientError naming the failure."""
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], env=_env(), text=True, capture_output=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()
        raise TransientError(f"`dvc {' '.join(args)}` failed: {tail[-1] if tail else proc.returncode}")
    return proc.stdout


# ---------------------------------------------------------------- run record

def _record_path(run_id: str) -> Path:
    return STATE / "runs" / (re.sub(r"[^A-Za-z0-9._-]", "_", run_id) + ".json")


def update_record(root: Path | str, run_id: str, **fields: Any) -> dict[str, Any]:
    """Merge fields into the run's record (atomic); returns the record."""
    path = Path(root) / _record_path(run_id)
    record = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {"run_id": run_id}
    record.update(fields)
    record["note"] = run_note(record)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, record)
    return record


def read_record(root: Path | str, run_id: str) -> dict[str, Any] | None:
    path = Path(root) / _record_path(run_id)
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def run_note(record: dict[str, Any]) -> str:
    """One line for the DAG run's note: what the run decided, or where and why it stopped."""
    if record.get("failed"):
        return f"stopped at {record['failed']['task']}: {record['failed']['error']}"
    gate = record.get("gate")
    if gate and not gate.get("passed"):
        return f"gate rejected candidate {gate['candidate'][:12]}: {gate['reasons']}"
    promoted = record.get("promotion")
    if promoted:
        verb = "promoted" if promoted.get("changed") else "already champion:"
        return f"{verb} {promoted['model']} v{promoted['version']} (gate passed: {gate and gate['summary']})"
    if record.get("approval") == "rejected":
        return "a reviewer rejected the promotion"
    return "running" if not record.get("finished") else "finished without promotion"


# ---------------------------------------------------------------- steps

def start(root: Path | str, raw_conf: dict[str, Any] | None, run: dict[str, Any]) -> dict[str, Any]:
    """Snapshot: apply the run's params, DVC-track the chosen dataset, make sure the registry exists."""
    with _in(root):
        leftover = restore_params()
        params = load_params()
        conf = check_conf(raw_conf, params)
        changes = overrides(conf, params)
        apply_overrides(changes)
        params = load_params()
        raw = Path(params.data.raw)
        files = sorted(p for p in raw.rglob("*") if p.is_file() and not p.name.startswith(".")) if raw.is_dir() else (
            [raw] if raw.is_file() else [])
        if not files:
            raise InputError(f"dataset {conf.dataset!r}: no data at {raw}")
        dvc("add", "--quiet", str(raw))
        registry.init(registry.open_store(params.registry.root, params.registry.model_name),
                      by=run.get("triggered_by"))
        md5 = (yaml.safe_load(Path(f"{raw}.dvc").read_text(encoding="utf-8")) or {})["outs"][0]["md5"]
        snapshot = {"dataset": conf.dataset, "path": str(raw), "md5": md5, "files": [str(f) for f in files],
                    "overrides": changes, "require_approval": conf.require_approval,
                    "restored_params_of_an_interrupted_run": leftover}
        update_record(".", run["run_id"], run=run, snapshot=snapshot, started_at=time.time())
    return snapshot


def dvc_status(root: Path | str, stage: str) -> list | None:
    """DVC's own status of one stage, in-process (no CLI start-up): [] when up to date, None if unknown."""
    try:
        from dvc.repo import Repo

        repo = Repo(str(root))
        try:
            return repo.status(targets=[stage]).get(stage, [])
        finally:
            repo.close()
    except Exception:  # let `dvc repro` decide and report
        return None


def run_stage(root: Path | str, stage: str) -> dict[str, Any]:
    """`dvc repro` one stage; its output goes to the task log. Returns whether it ran and for how long."""
    if stage not in STAGES:
        raise ConfigError(f"unknown stage {stage!r}; one of {', '.join(STAGES)}")
    t0 = time.perf_counter()
    if dvc_status(root, stage) == []:  # what `dvc repro` would decide, without starting another interpreter
        print(f"Stage '{stage}' didn't change, skipping", flush=True)
        return {"stage": stage, "ran": False, "seconds": round(time.perf_counter() - t0, 2)}
    proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "--single-item", stage], cwd=root, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tail: deque[str] = deque(maxlen=60)
    for line in proc.stdout:  # stream to the task log as it happens
        print(line, end="", flush=True)
        tail.append(line.rstrip())
    code = proc.wait()
    seconds = round(time.perf_counter() - t0, 2)
    text = "\n".join(tail)
    if code == 0:
        return {"stage": stage, "ran": f"Stage '{stage}' didn't change" not in text, "seconds": seconds}
    exited = re.search(r"exited with (-?\d+)", text)
    stage_code = int(exited.group(1)) if exited else None
    said = [ln for ln in tail if ln.startswith("error:")]
    reason = said[-1].removeprefix("error:").strip() if said else (tail[-1] if tail else f"exit {code}")
    if stage_code == 1:
        raise CheckFailed(f"{stage}: {reason}")
    if stage_code == 2:
        raise ConfigError(f"{stage}: {reason}")
    raise TransientError(f"{stage}: dvc repro failed ({reason})")


def evaluate(root: Path | str) -> dict[str, Any]:
    """The evaluate stage, except when the candidate already is the champion and only the registry
    changed since it was evaluated (its own promotion): scoring it against itself would add nothing.
    dvc.lock then still records the evaluation that was actually run."""
    from pipelines.evaluate import candidate_hash

    with _in(root):
        params = load_params()
        store = registry.open_store(params.registry.root, params.registry.model_name)
        entries = registry.read_ledger(store)
        champion = registry.aliases(entries).get("champion")
        metrics = Path(params.evaluate.report_dir) / "metrics.json"
        if champion is not None and metrics.exists() and Path(params.train.output_dir, "adapter").is_dir():
            current = candidate_hash(params.train.output_dir)
            evaluated = json.loads(metrics.read_text(encoding="utf-8")).get("candidate_hash")
            if registry.registered(entries)[champion]["candidate_hash"] == current == evaluated:
                ledger = f"{params.registry.root}/{params.registry.model_name}/ledger.jsonl"
                status = dvc_status(".", "evaluate") or []
                changed = [path for item in status for path in item.get("changed deps", {})]
                if not status or (changed == [ledger] and len(status) == 1 and len(status[0]) == 1):
                    print(f"candidate {current[:12]} is already champion v{champion} and was evaluated; "
                          "only the registry changed since: evaluate skipped", flush=True)
                    return {"stage": "evaluate", "ran": False, "seconds": 0.0}
    return run_stage(root, "evaluate")


def gate_summary(params: Params) -> dict[str, Any]:
    decision = json.loads(Path(params.gate.decision_path).read_text(encoding="utf-8"))
    failed = [r for r in decision["rules"] if not r["passed"]]
    return {"passed": bool(decision["passed"]), "candidate": decision["candidate_hash"],
            "champion_version": decision.get("champion_version"),
            "summary": f"{len(decision['rules']) - len(failed)}/{len(decision['rules'])} rules",
            "reasons": "; ".join(f"{r['rule']}: {r['detail']} (measured {r['measured']}, threshold {r['threshold']})"
                                 for r in failed) or "all rules passed"}


def gate(root: Path | str, run_id: str) -> dict[str, Any]:
    """Run the gate stage; a rejection of this candidate is returned as an outcome, not raised."""
    from pipelines.evaluate import candidate_hash

    try:
        run_stage(root, "gate")
    except CheckFailed:
        with _in(root):
            params = load_params()
            path = Path(params.gate.decision_path)
            if not path.exists() or json.loads(path.read_text("utf-8"))["candidate_hash"] != candidate_hash(
                    params.train.output_dir):
                raise
    with _in(root):
        outcome = gate_summary(load_params())
    update_record(root, run_id, gate=outcome)
    return outcome


def promote(root: Path | str, run: dict[str, Any], approved_by: str | None = None) -> dict[str, Any]:
    """Register the candidate and make it champion, with its lineage evidence beside it."""
    from pipelines import lineage

    with _in(root):
        params = load_params()
        model = params.registry.model_name
        store = registry.open_store(params.registry.root, model)
        result = registry.promote(store, model, Path(params.train.output_dir), Path(params.gate.decision_path),
                                  Path(params.evaluate.report_dir) / "metrics.json", by=run.get("triggered_by"),
                                  approved_by=approved_by, reason=f"{run.get('dag_id')} run {run.get('run_id')}: passed gate",
                                  evidence=lineage.evidence(params))
        if params.registry.gto_tags and result["changed"]:
            warning = registry.gto_mirror(model, result["version"], f"lifecycle run {run.get('run_id')}")
            if warning:
                print(f"warning: {warning}", flush=True)
        promotion = {"model": model, "version": result["version"], "changed": result["changed"],
                     "approved_by": approved_by}
    update_record(root, run["run_id"], promotion=promotion)
    return promotion


def notify_serving(root: Path | str, version: int) -> list[str]:
    """Confirm that each configured server answers with the new champion (they follow the alias)."""
    import httpx

    with _in(root):
        params = load_params()
    confirmed = []
    for url in params.lifecycle.serving_urls:
        deadline = time.monotonic() + params.lifecycle.serving_timeout_s
        seen = None
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                seen = httpx.get(f"{url.rstrip('/')}/readyz", timeout=5).headers.get("x-model-version")
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


def record(root: Path | str, run: dict[str, Any]) -> dict[str, Any]:
    """Commit the run's evidence to the lineage branch and push data and models to the DVC remote."""
    from pipelines import lineage
    from pipelines.lineage_branch import commit_run

    with _in(root):
        params = load_params()
        rec = read_record(".", run["run_id"]) or {"run": run}
        files = list(lineage.evidence_paths(params).values())
        message = f"lineage: {run.get('dag_id')} {run.get('run_id')}\n\n{run_note(rec)}"
        commit = commit_run(Path("."), params.lineage.branch, files, {**rec, "run": run}, message)
        promoted = rec.get("promotion")
        if commit and promoted and promoted.get("changed"):  # anchor the commit in the ledger for auditors
            store = registry.open_store(params.registry.root, promoted["model"])
            registry.record_lineage_commit(store, promoted["version"], commit, params.lineage.branch,
                                           run=f"{run.get('dag_id')} run {run.get('run_id')}",
                                           by=run.get("triggered_by"))
        if params.lineage.push:
            dvc("push", "--quiet")
    return update_record(root, run["run_id"], lineage_commit=commit, lineage_branch=params.lineage.branch,
                         pushed=params.lineage.push)


def rollback(root: Path | str, model: str, to_version: int | None, reason: str, run: dict[str, Any]) -> dict[str, Any]:
    """Move `champion` back (to `previous`, or to `to_version`) with the reason in the ledger."""
    from pipelines.config import check_model_name

    check_model_name(model)
    with _in(root):
        params = load_params()
        store = registry.open_store(params.registry.root, model)
        if not registry.read_ledger(store):
            raise InputError(f"model {model!r} has no registry at {params.registry.root}")
        entry = registry.move_alias(store, model, "champion", to_version, by=run.get("triggered_by"),
                                    reason=reason, run=f"{run.get('dag_id')} run {run.get('run_id')}")
        if params.registry.gto_tags:
            registry.gto_mirror(model, entry["version"], reason)
    return {"model": model, "champion": entry["version"], "ledger_seq": entry["seq"]}


def new_drops(root: Path | str, dataset_dir: str) -> list[str]:
    """Files of the dataset directory that are new or changed since the last look (state in .lifecycle/)."""
    base = Path(root) / dataset_dir
    state = Path(root) / STATE / "arrival.json"
    seen = json.loads(state.read_text(encoding="utf-8")) if state.exists() else None
    now = {str(p.relative_to(base)): [p.stat().st_size, p.stat().st_mtime_ns]
           for p in sorted(base.rglob("*")) if p.is_file() and not p.name.startswith(".")} if base.is_dir() else {}
    state.parent.mkdir(parents=True, exist_ok=True)
    write_json(state, now)
    if seen is None:  # first look: remember what is there; the weekly run or a manual trigger covers it
        return []
    return sorted(name for name, sig in now.items() if seen.get(name) != sig)


def fail(root: Path | str, run_id: str, task: str, error: BaseException) -> None:
    """Note in the run's record where and why it stopped (the DAG run's note shows it)."""
    with contextlib.suppress(Exception):
        update_record(root, run_id, failed={"task": task, "error": str(error).splitlines()[0][:300]})


def finish(root: Path | str, run_id: str | None = None) -> bool:
    """Teardown: restore params.yaml; mark the run's record finished."""
    with _in(root):
        restored = restore_params()
    if run_id:
        with contextlib.suppress(Exception):
            update_record(root, run_id, finished=True, params_restored=restored)
    return restored


def is_deterministic(error: BaseException) -> bool:
    """Bad data, bad params, a failed check: retrying cannot help."""
    return isinstance(error, PipelineError)
