"""Model registry: immutable content-addressed versions, aliases and a hash-chained ledger.

Layout under `<root>/<model>/` (root: a local directory or any fsspec URL):
- `versions/vNNNN/files/...`: a copy of the candidate directory, never rewritten once in the ledger;
- `versions/vNNNN/manifest.json`: sha256 of every file plus lineage metadata (hashes of adapter,
  base model, data, dvc.lock; params, git commit, metrics, gate decision, run and who ran it);
- `ledger.jsonl`: one JSON entry per change (register/promote, rollback, alias move), each carrying
  the hash of the previous entry and the full alias map after the change.

The ledger is the single commit point: it is replaced in one atomic write, and the current aliases
are those of its last entry. A version directory is complete before the entry naming it is written,
so a process killed at any moment leaves `champion` on a complete version, old or new. Writers take
an exclusive lock (`.lock`, local roots); object stores need a single writer (an Airflow pool).
"""
from __future__ import annotations

import getpass
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from pipelines.dataio import atomic_write_bytes
from pipelines.errors import CheckFailed, InputError

GENESIS = "0" * 64


@dataclass(frozen=True)
class Store:
    fs: Any  # an fsspec filesystem
    base: str  # <root>/<model> inside fs
    local: bool

    def path(self, *parts: str) -> str:
        return "/".join([self.base.rstrip("/"), *parts])


def open_store(root: str, model: str) -> Store:
    import fsspec

    fs, base = fsspec.core.url_to_fs(root)
    local = "file" in (fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,))
    if local:
        base = str(Path(base).resolve())
    return Store(fs, f"{base.rstrip('/')}/{model}", local)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode("utf-8")


def entry_hash(entry: dict[str, Any]) -> str:
    return _sha(_canonical({k: v for k, v in entry.items() if k != "hash"}))


def _write(store: Store, path: str, data: bytes) -> None:
    if store.local:
        atomic_write_bytes(path, data)
    else:
        store.fs.pipe_file(path, data)  # a single object write is atomic on object stores


@contextmanager
def _locked(store: Store) -> Iterator[None]:
    if not store.local:
        yield
        return
    import fcntl

    Path(store.base).mkdir(parents=True, exist_ok=True)
    with open(Path(store.base) / ".lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# ---------------------------------------------------------------- ledger

def read_ledger(store: Store) -> list[dict[str, Any]]:
    path = store.path("ledger.jsonl")
    if not store.fs.exists(path):
        return []
    lines = store.fs.cat_file(path).decode("utf-8").splitlines()
    entries = []
    for number, line in enumerate(lines, start=1):
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            raise CheckFailed(f"registry ledger line {number} is not valid JSON (altered or torn)") from None
    return entries


def aliases(entries: list[dict[str, Any]]) -> dict[str, int]:
    return dict(entries[-1]["aliases"]) if entries else {}


def registered(entries: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """version -> {candidate_hash, manifest_sha256} for every version the ledger registered."""
    out = {}
    for e in entries:
        if e.get("registered"):
            out[int(e["registered"]["version"])] = e["registered"]
    return out


def _append(store: Store, entries: list[dict[str, Any]], entry: dict[str, Any]) -> dict[str, Any]:
    entry = {"seq": len(entries) + 1, "at": datetime.now(timezone.utc).isoformat(timespec="seconds"), **entry,
             "prev_hash": entries[-1]["hash"] if entries else GENESIS}
    entry["hash"] = entry_hash(entry)
    body = b"".join(_canonical(e) + b"\n" for e in [*entries, entry])
    _write(store, store.path("ledger.jsonl"), body)  # the commit point
    return entry


# ---------------------------------------------------------------- versions

def file_sha256(path: Path) -> str:
    return _sha(path.read_bytes())


def _files(directory: Path) -> dict[str, str]:
    return {p.relative_to(directory).as_posix(): _sha(p.read_bytes())
            for p in sorted(directory.rglob("*")) if p.is_file()}


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def build_manifest(model: str, version: int, candidate: Path, decision: dict, evaluation: dict | None,
                   by: str, evidence: dict[str, bytes] | None = None) -> dict[str, Any]:
    config = json.loads((candidate / "train_config.json").read_text(encoding="utf-8"))
    files = _files(candidate)
    dvc_lock = Path("dvc.lock")
    return {
        "model": model, "version": version, "candidate_hash": decision["candidate_hash"], "files": files,
        "adapter_sha256": files.get("adapter/adapter_model.safetensors"),
        "base_model": config.get("base_model"), "base_hash": config.get("base_hash"),
        "data_version": config.get("data_version"), "params": config.get("params"),
        "git_commit": _git("rev-parse", "HEAD"),
        "dvc_lock_sha256": _sha(dvc_lock.read_bytes()) if dvc_lock.exists() else None,
        "metrics": (evaluation or {}).get("candidate"), "gate_decision": decision,
        "run": {"dag_id": os.environ.get("AIRFLOW_CTX_DAG_ID"), "run_id": os.environ.get("AIRFLOW_CTX_DAG_RUN_ID"),
                "task_id": os.environ.get("AIRFLOW_CTX_TASK_ID")},
        "triggered_by": by, "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        # Copies of what the auditor's chain needs (dvc.lock, raw .dvc, params, reports), kept beside the
        # version so that `pipelines lineage` can re-check them after the workspace has moved on.
        "evidence": {name: _sha(data) for name, data in sorted((evidence or {}).items())},
    }


def _store_version(store: Store, version: int, candidate: Path, manifest: dict[str, Any],
                   evidence: dict[str, bytes] | None = None) -> str:
    """Copy the candidate (and evidence) in, complete before it becomes visible; return the manifest sha256."""
    target = store.path("versions", f"v{version:04d}")
    data = json.dumps(manifest, indent=2, sort_keys=True, default=str).encode("utf-8")
    if store.fs.exists(target):  # an orphan left by a killed run: never referenced by the ledger
        store.fs.rm(target, recursive=True)
    if store.local:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=Path(target).parent, prefix=f".v{version:04d}.", suffix=".tmp"))
        shutil.copytree(candidate, tmp / "files")
        for name, blob in (evidence or {}).items():
            (tmp / "evidence").mkdir(exist_ok=True)
            (tmp / "evidence" / name).write_bytes(blob)
        (tmp / "manifest.json").write_bytes(data)
        os.replace(tmp, target)
    else:
        store.fs.put(str(candidate), target + "/files", recursive=True)
        for name, blob in (evidence or {}).items():
            store.fs.pipe_file(f"{target}/evidence/{name}", blob)
        store.fs.pipe_file(target + "/manifest.json", data)
    return _sha(data)


def version_dir(store: Store, version: int, cache: Path | None = None) -> Path:
    """A local directory with the files of `version` (downloaded for remote roots)."""
    src = store.path("versions", f"v{version:04d}", "files")
    if store.local:
        return Path(src)
    cache = cache or Path(tempfile.mkdtemp(prefix="registry-"))
    store.fs.get(src, str(cache / f"v{version:04d}"), recursive=True)
    return cache / f"v{version:04d}"


def champion(store: Store) -> tuple[Path | None, int | None]:
    current = aliases(read_ledger(store)).get("champion")
    return (version_dir(store, current), current) if current is not None else (None, None)


# ---------------------------------------------------------------- commands

def init(store: Store, by: str | None = None) -> None:
    """Create the ledger with a first entry (idempotent), so that stages can depend on it."""
    with _locked(store):
        if not read_ledger(store):
            _append(store, [], {"action": "init", "version": None, "registered": None, "aliases": {},
                                "by": by or _who(), "reason": "registry created"})

def promote(store: Store, model: str, candidate: Path, decision_path: Path, evaluation_path: Path | None,
            by: str | None = None, approved_by: str | None = None, reason: str = "",
            evidence: dict[str, bytes] | None = None) -> dict[str, Any]:
    """Register the candidate (once) and move `champion` to it, only with a passing decision for it."""
    from pipelines.evaluate import candidate_hash

    if not decision_path.exists():
        raise CheckFailed(f"refusing to promote: no gate decision at {decision_path}")
    decision = json.loads(decision_path.read_text(encoding="utf-8"))
    current_hash = candidate_hash(candidate)
    if decision.get("candidate_hash") != current_hash:
        raise CheckFailed(f"refusing to promote: the gate decision is for candidate "
                          f"{str(decision.get('candidate_hash'))[:12]}, not {current_hash[:12]}")
    if decision.get("passed") is not True:
        failed = [r["rule"] for r in decision.get("rules", []) if not r.get("passed")]
        raise CheckFailed(f"refusing to promote: the gate failed ({', '.join(failed) or 'no rules'})")
    evaluation = json.loads(evaluation_path.read_text("utf-8")) if evaluation_path and evaluation_path.exists() else None
    by = by or _who()
    with _locked(store):
        entries = read_ledger(store)
        known = {v["candidate_hash"]: n for n, v in registered(entries).items()}
        current = aliases(entries)
        version = known.get(current_hash)
        if version is not None and current.get("champion") == version:
            print(f"{model} v{version} is already champion; nothing to do", file=sys.stderr)
            return {"version": version, "changed": False}
        reg = None
        if version is None:
            version = max(registered(entries), default=0) + 1
            manifest = build_manifest(model, version, candidate, decision, evaluation, by, evidence)
            reg = {"version": version, "candidate_hash": current_hash,
                   "manifest_sha256": _store_version(store, version, candidate, manifest, evidence)}
        moved = {**current, "champion": version}
        if current.get("champion") is not None:
            moved["previous"] = current["champion"]
        entry = _append(store, entries, {"action": "promote", "version": version, "registered": reg,
                                         "aliases": moved, "by": by, "approved_by": approved_by,
                                         "reason": reason or "passed gate"})
    print(f"promoted {model} v{version} to champion (ledger entry {entry['seq']})", file=sys.stderr)
    return {"version": version, "changed": True, "entry": entry}


def move_alias(store: Store, model: str, alias: str, to_version: int | None, reason: str,
               by: str | None = None) -> dict[str, Any]:
    """Point `alias` at a registered version. For `champion`, the default target is `previous`
    (a rollback) and `previous` then points at the version being replaced."""
    with _locked(store):
        entries = read_ledger(store)
        current = aliases(entries)
        if alias == "champion" and to_version is None:
            to_version = current.get("previous")
            if to_version is None:
                raise CheckFailed(f"cannot roll back {model}: no previous version")
        if to_version not in registered(entries):
            raise CheckFailed(f"{model} has no registered version {to_version}")
        moved = {**current, alias: to_version}
        if alias == "champion" and current.get("champion") not in (None, to_version):
            moved["previous"] = current["champion"]
        action = "rollback" if alias == "champion" else "alias"
        entry = _append(store, entries, {"action": action, "version": to_version, "registered": None,
                                         "aliases": moved, "by": by or _who(), "reason": reason})
    print(f"{model}: {alias} -> v{to_version} ({action}, ledger entry {entry['seq']})", file=sys.stderr)
    return entry


def verify(store: Store) -> list[str]:
    """Every problem found, first the first: altered ledger lines, manifests or files."""
    problems: list[str] = []
    try:
        entries = read_ledger(store)
    except CheckFailed as err:
        return [str(err)]
    prev = GENESIS
    for number, e in enumerate(entries, start=1):
        if e.get("prev_hash") != prev:
            problems.append(f"ledger line {number}: chain broken (prev_hash does not match line {number - 1})")
        if entry_hash(e) != e.get("hash"):
            problems.append(f"ledger line {number}: altered (hash mismatch)")
        prev = e.get("hash")
    for version, reg in sorted(registered(entries).items()):
        vdir = store.path("versions", f"v{version:04d}")
        manifest_path = vdir + "/manifest.json"
        if not store.fs.exists(manifest_path):
            problems.append(f"v{version}: manifest missing")
            continue
        raw = store.fs.cat_file(manifest_path)
        if _sha(raw) != reg["manifest_sha256"]:
            problems.append(f"v{version}: manifest.json altered")
            continue
        files = json.loads(raw)["files"]
        for name, digest in json.loads(raw).get("evidence", {}).items():
            path = f"{vdir}/evidence/{name}"
            if not store.fs.exists(path):
                problems.append(f"v{version}: evidence {name} missing")
            elif _sha(store.fs.cat_file(path)) != digest:
                problems.append(f"v{version}: evidence {name} altered")
        present = {p[len(vdir) + len("/files/"):] for p in store.fs.find(vdir + "/files")}
        for rel, digest in files.items():
            if rel not in present:
                problems.append(f"v{version}: file {rel} missing")
            elif _sha(store.fs.cat_file(f"{vdir}/files/{rel}")) != digest:
                problems.append(f"v{version}: file {rel} altered")
        for rel in sorted(present - set(files)):
            problems.append(f"v{version}: unexpected file {rel}")
    known = registered(entries)
    for name, version in aliases(entries).items():
        if version not in known:
            problems.append(f"alias {name} points at unregistered version {version}")
    return problems


def gto_mirror(model: str, version: int, reason: str, repo: str = ".") -> str | None:
    """Mirror a champion move as GTO git tags (`model@v0.0.N`, `model#champion#K`) so that
    `gto show` / `gto history` list promotions. Best effort: the ledger stays the source of truth.
    GTO allows one registered version per commit; a second version at the same commit is assigned
    the stage only if it was registered earlier. Returns a warning, or None when tags were made."""
    import gto.api

    tag_version = f"v0.0.{version}"
    try:
        try:
            gto.api.register(repo, model, "HEAD", version=tag_version, message=reason)
        except Exception as err:  # already registered, or another version at this commit
            if "already" not in str(err):
                raise
        gto.api.assign(repo, model, "champion", version=tag_version, message=reason, force=True,
                       skip_registration=True)
    except Exception as err:
        return f"GTO tags not created for {model} {tag_version}: {str(err).splitlines()[0][:200]}"
    return None


def _who() -> str:
    for var in ("PIPELINES_USER", "AIRFLOW_CTX_DAG_OWNER"):
        if os.environ.get(var):
            return os.environ[var]
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"


def describe(store: Store, model: str) -> str:
    entries = read_ledger(store)
    current = aliases(entries)
    if not entries:
        return f"{model}: no versions yet"
    lines = [f"{model}: aliases " + ", ".join(f"{k}=v{v}" for k, v in sorted(current.items()))]
    by_version = {v: [k for k, x in current.items() if x == v] for v in registered(entries)}
    for version, reg in sorted(registered(entries).items()):
        lines.append(f"  v{version}  candidate {reg['candidate_hash'][:12]}  {' '.join(by_version[version])}")
    lines.append("history:")
    lines += [f"  {e['seq']:>3} {e['at']} {e['action']:<8} v{e['version']}  by {e['by']}"
              + (f" approved by {e['approved_by']}" if e.get("approved_by") else "") + f"  {e.get('reason', '')}"
              for e in entries]
    return "\n".join(lines)


def show_version(store: Store, version: int) -> dict[str, Any]:
    path = store.path("versions", f"v{version:04d}", "manifest.json")
    if version not in registered(read_ledger(store)) or not store.fs.exists(path):
        raise InputError(f"no registered version {version}")
    return json.loads(store.fs.cat_file(path))
