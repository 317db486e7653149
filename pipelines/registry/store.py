"""Model registry: immutable content-addressed versions, aliases and a hash-chained ledger.

Layout under `<root>/<model>/` (root: a local directory or any fsspec URL):
- `versions/vNNNN/files/...`: a copy of the candidate directory, never rewritten once in the ledger;
- `versions/vNNNN/manifest.json`: sha256 of every file plus lineage metadata (hashes of adapter,
  base model, data, dvc.lock; params, git commit, metrics, gate decision, run and who ran it);
- `ledger.jsonl`: one JSON entry per change (register/promote, rollback, alias move, lineage commit),
  each carrying the hash of the previous entry and the full alias map after the change;
- `head.json`: the sequence number and hash of the last committed entry (the chain's anchored tip).

`head.json` is the single commit point: a change appends its entry to the ledger, then replaces the
head in one atomic write. Readers take the ledger up to the head and check that its entry there has
the head's hash, so a truncated, emptied or deleted ledger (or a lost last line) is an error, never an
older state; lines after the head are an interrupted write's and are dropped by the next write.

Every reader goes through `read_ledger`, which fails closed unless each line has its shape, each
entry's hash is the hash of its content and names the previous one, every signature holds (signed
ledgers), and the ledger still holds the newest head kept in git (`anchor`, when the reader has the
repository). Every write appends only to a ledger that passed those checks, signed by a key trusted
at its tip, and then records its head in git.

A version directory is complete (world-readable, like any file) before the entry naming it is
written, so a process killed at any moment leaves `champion` on a complete version, old or new. A
promotion notes the version it is writing in `pending.json` first; the next write removes what such
a note names if the ledger never did (and temp files), never a version directory the note does not
name: `verify` reports those, a person decides. Aliases only ever move to a version that verifies.
Writers take an exclusive lock (`.lock`, local roots); object stores need a single writer (an Airflow
pool).
"""
from __future__ import annotations

import contextlib
import getpass
import json
import os
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from pydantic import BaseModel, ConfigDict, StrictInt, StrictStr, ValidationError

from pipelines.core.config import check_model_name
from pipelines.core.dataio import atomic_write_bytes, current_umask, file_lock
from pipelines.core.errors import CheckFailed, ConfigError, InputError
from pipelines.core.hashing import content_hash, copy_tree_hashed, tree_sha256
from pipelines.core.hashing import sha256_bytes as _sha
from pipelines.registry import signing
from pipelines.registry.anchor import GitAnchor
from pipelines.registry.signing import Keys

GENESIS = "0" * 64
LEDGER, HEAD, PENDING = "ledger.jsonl", "head.json", "pending.json"


@dataclass(frozen=True)
class Store:
    fs: Any  # an fsspec filesystem
    base: str  # <root>/<model> inside fs
    local: bool
    keys: Keys = field(default_factory=Keys)  # signing key and trusted keys (registry.signing)
    anchor: GitAnchor | None = None  # where heads are kept in git (None: no repository to check against)

    def path(self, *parts: str) -> str:
        return "/".join([self.base.rstrip("/"), *parts])

    @property
    def model(self) -> str:
        return self.base.rstrip("/").rsplit("/", 1)[-1]

    @property
    def location(self) -> str:
        """The registry's identity for its git anchor: the resolved path, or the URL."""
        return self.base if self.local else self.fs.unstrip_protocol(self.base)


def open_store(root: str, model: str, keys: Keys | None = None, anchor: GitAnchor | None = None) -> Store:
    import fsspec

    check_model_name(model)  # the name becomes a path: never `../x`
    fs, base = fsspec.core.url_to_fs(root)
    local = "file" in (fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,))
    if local:
        base = str(Path(base).resolve())
    return Store(fs, f"{base.rstrip('/')}/{model}", local, keys or Keys(), anchor)


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode("utf-8")


def entry_hash(entry: dict[str, Any]) -> str:
    """The entry's hash over everything but the hash and the signature (which signs the hash)."""
    return _sha(_canonical({k: v for k, v in entry.items() if k not in ("hash", "signature")}))


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
    with file_lock(Path(store.base) / ".lock"):
        yield


# ---------------------------------------------------------------- ledger

class _Registered(BaseModel):
    model_config = ConfigDict(extra="allow")
    version: StrictInt
    candidate_hash: StrictStr
    manifest_sha256: StrictStr


class _Entry(BaseModel):
    """The shape every ledger line must have (more fields are allowed: they are hashed too)."""

    model_config = ConfigDict(extra="allow")
    seq: StrictInt
    action: StrictStr
    version: StrictInt | None = None
    registered: _Registered | None = None
    aliases: dict[StrictStr, StrictInt]
    prev_hash: StrictStr
    hash: StrictStr


def _parse_line(number: int, raw: bytes) -> dict[str, Any]:
    where = f"registry ledger line {number}"
    try:
        entry = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise CheckFailed(f"{where} is not UTF-8 (altered or torn)") from None
    except json.JSONDecodeError:
        raise CheckFailed(f"{where} is not valid JSON (altered or torn)") from None
    except RecursionError:
        raise CheckFailed(f"{where} is nested too deeply to be an entry (altered)") from None
    if not isinstance(entry, dict):
        raise CheckFailed(f"{where} is a JSON {type(entry).__name__}, not an entry object (altered)")
    try:
        _Entry.model_validate(entry)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise CheckFailed(f"{where}: field '{field}': {first['msg']} (altered)") from None
    if entry["seq"] != number:
        raise CheckFailed(f"{where} has seq {entry['seq']} (lines removed, added or reordered)")
    return entry


def read_head(store: Store) -> dict[str, Any] | None:
    path = store.path(HEAD)
    if not store.fs.exists(path):
        return None
    try:
        head = json.loads(store.fs.cat_file(path).decode("utf-8"))
        if not (isinstance(head, dict) and isinstance(head.get("seq"), int) and head["seq"] >= 1
                and isinstance(head.get("hash"), str)):
            raise ValueError
    except (ValueError, UnicodeDecodeError):
        raise CheckFailed(f"registry head {HEAD} is malformed (altered)") from None
    return head


def read_ledger(store: Store) -> list[dict[str, Any]]:
    """The committed entries: the ledger up to its anchored head, every line checked for shape.

    Raises CheckFailed naming the problem when a line is malformed or the ledger no longer reaches
    its head (truncated, emptied, deleted, rewritten)."""
    path = store.path(LEDGER)
    head = read_head(store)
    if not store.fs.exists(path):
        if head is not None:
            raise CheckFailed(f"registry ledger is missing, but its head records {head['seq']} entries (deleted)")
        return []
    lines = store.fs.cat_file(path).split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    if head is None:
        if lines:
            raise CheckFailed(f"registry ledger has {len(lines)} lines but no {HEAD} anchoring its last entry "
                              "(head deleted, or written by a version before heads)")
        return []
    if len(lines) < head["seq"]:
        raise CheckFailed(f"registry ledger has {len(lines)} entries, its head records {head['seq']} "
                          "(truncated or emptied)")
    entries = [_parse_line(number, raw) for number, raw in enumerate(lines[:head["seq"]], start=1)]
    if entries[-1]["hash"] != head["hash"]:
        raise CheckFailed(f"registry ledger line {head['seq']}: its hash differs from the one {HEAD} anchors "
                          "(altered or rewritten)")
    _check_chain(entries)
    unsigned = signing.problems(entries, store.keys.trusted) if store.keys.trusted else []
    if unsigned:  # fail closed: nothing is read from a signed ledger whose signatures do not hold
        raise CheckFailed(unsigned[0] + (f" (+{len(unsigned) - 1} more)" if len(unsigned) > 1 else ""))
    _check_anchor(store, entries)
    return entries


def _check_chain(entries: list[dict[str, Any]]) -> None:
    """Each entry's hash is recomputed from its content and names the one before: an entry edited, added
    or removed without recomputing every later hash is named."""
    prev = GENESIS
    for number, entry in enumerate(entries, start=1):
        if entry["prev_hash"] != prev:
            before = f"the hash of line {number - 1}" if number > 1 else "the genesis hash"
            raise CheckFailed(f"registry ledger line {number}: chain broken (its prev_hash is not {before})")
        if entry_hash(entry) != entry["hash"]:
            raise CheckFailed(f"registry ledger line {number}: altered (its content does not hash to its hash)")
        prev = entry["hash"]


def _check_anchor(store: Store, entries: list[dict[str, Any]]) -> None:
    """The newest head kept in git must still be in the ledger (cut short or rewritten otherwise)."""
    if store.anchor is None:
        return
    kept = store.anchor.read(store.model, store.location)
    if kept is None:
        return
    where = f"git ({store.anchor.repo.name}) kept ledger head {kept['seq']}"
    if len(entries) < kept["seq"]:
        raise CheckFailed(f"registry ledger cut short: it has {len(entries)} entries, {where} (entries deleted)")
    if entries[kept["seq"] - 1]["hash"] != kept["hash"]:
        raise CheckFailed(f"registry ledger rewritten: its entry {kept['seq']} is not the one {where}")


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
    _check_signer(store, entries)
    signature = store.keys.sign(entry["hash"])
    if signature is not None:
        entry["signature"] = signature
    body = b"".join(_canonical(e) + b"\n" for e in [*entries, entry])
    _write(store, store.path(LEDGER), body)
    head = {"seq": entry["seq"], "hash": entry["hash"]}
    _write(store, store.path(HEAD), _canonical(head))  # the commit point
    if store.anchor is not None:  # kept outside the storage too; a failure leaves the older head there
        warning = store.anchor.record(store.model, store.location, head, entry["action"])
        if warning:
            print(f"warning: {warning}; the next registry write records a newer head", file=sys.stderr)
    return entry


def _check_signer(store: Store, entries: list[dict[str, Any]]) -> None:
    """Fail closed before anything is written: a signed ledger takes entries only from a key it trusts now."""
    if not store.keys.trusted:
        return
    if store.keys.signer is None:
        raise ConfigError("this registry's ledger is signed (registry.trusted_keys): writing to it needs the "
                          "signing key (registry.signing_key_file, or the env var registry.signing_key_env names)")
    mine = signing.public_key(store.keys.signer)
    if mine not in signing.allowed_at_tip(entries, store.keys.trusted):
        raise ConfigError(f"the signing key {mine[:12]}... is not trusted at the tip of this registry's ledger "
                          "(not in registry.trusted_keys, or retired by a rotation); nothing was written")


def _tidy(store: Store, entries: list[dict[str, Any]]) -> None:
    """Remove what an interrupted write left: temp files, and the version directory a promotion's own
    note (`pending.json`) names when the ledger never registered it. Nothing else is deleted: a version
    directory without that note is reported by `verify`, never removed. Under the lock."""
    if store.local:
        base = Path(store.base)
        for leftover in [*base.glob(".*.tmp"), *base.glob("versions/.*.tmp")]:
            shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink(missing_ok=True)
    version = _pending(store)
    if version is None:
        return
    name = f"v{version:04d}"
    if version not in registered(entries) and store.fs.exists(store.path("versions", name)):
        store.fs.rm(store.path("versions", name), recursive=True)
        print(f"removed {name}, left by an interrupted promotion ({PENDING})", file=sys.stderr)
    store.fs.rm(store.path(PENDING))


def _pending(store: Store) -> int | None:
    """The version an interrupted promotion was writing, from its note (None: no note, or not ours)."""
    if not store.fs.exists(store.path(PENDING)):
        return None
    try:
        version = json.loads(store.fs.cat_file(store.path(PENDING))).get("version")
    except (ValueError, AttributeError, RecursionError):
        return None
    return version if isinstance(version, int) and not isinstance(version, bool) and version >= 1 else None


def _version_dirs(store: Store) -> set[str]:
    root = store.path("versions")
    if not store.fs.exists(root):
        return set()
    names = {p.rstrip("/").rsplit("/", 1)[-1] for p in store.fs.ls(root, detail=False)}
    return {n for n in names if n.startswith("v") and n[1:].isdigit()}


# ---------------------------------------------------------------- versions

def _git(*args: str, cwd: Path | None = None) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def build_manifest(model: str, version: int, candidate: Path, decision: dict, evaluation: dict | None,
                   by: str, evidence: dict[str, bytes] | None = None, root: Path = Path("."),
                   run: dict[str, Any] | None = None) -> dict[str, Any]:
    """`root`: the model's folder (its dvc.lock, inside the git checkout the candidate was trained from);
    `run`: the orchestrator's run (dag_id, run_id, task_id), given by the caller (none: a promotion by hand)."""
    config = json.loads((candidate / "train_config.json").read_text(encoding="utf-8"))
    files = tree_sha256(candidate)
    dvc_lock = Path(root) / "dvc.lock"
    run = run or {}
    return {
        "model": model, "version": version, "candidate_hash": decision["candidate_hash"], "files": files,
        "adapter_sha256": files.get("adapter/adapter_model.safetensors"),
        "base_model": config.get("base_model"), "base_hash": config.get("base_hash"),
        "data_version": config.get("data_version"), "params": config.get("params"),
        "git_commit": _git("rev-parse", "HEAD", cwd=root),
        "dvc_lock_sha256": _sha(dvc_lock.read_bytes()) if dvc_lock.exists() else None,
        "metrics": (evaluation or {}).get("candidate"), "gate_decision": decision,
        "run": {k: run.get(k) for k in ("dag_id", "run_id", "task_id")},
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
    if store.fs.exists(target):  # not ours to replace: an interrupted promotion's would be gone (_tidy)
        raise CheckFailed(f"refusing to register v{version}: versions/v{version:04d} exists but the ledger does not "
                          "name it (a ledger cut short, or a directory put there by hand); run `pipelines registry "
                          "verify`; nothing was written")
    _write(store, store.path(PENDING), _canonical({"version": version}))  # what _tidy may remove if we die
    if store.local:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=Path(target).parent, prefix=f".v{version:04d}.", suffix=".tmp"))
        if copy_tree_hashed(candidate, tmp / "files")[1] != manifest["files"]:
            raise CheckFailed(f"refusing to register v{version}: the candidate {candidate} changed while it was "
                              "copied into the registry; nothing was written")
        for name, blob in (evidence or {}).items():
            (tmp / "evidence").mkdir(exist_ok=True)
            (tmp / "evidence" / name).write_bytes(blob)
        (tmp / "manifest.json").write_bytes(data)
        tmp.chmod(0o777 & ~current_umask())  # mkdtemp makes 0700: servers and auditors run as other users
        os.replace(tmp, target)
    else:
        store.fs.put(str(candidate), target + "/files", recursive=True)
        for name, blob in (evidence or {}).items():
            store.fs.pipe_file(f"{target}/evidence/{name}", blob)
        store.fs.pipe_file(target + "/manifest.json", data)
    return _sha(data)


def read_evidence(store: Store, version: int, name: str, manifest: dict[str, Any]) -> bytes | None:
    """One evidence file kept beside `version`, only if its bytes are the ones `manifest` (read through
    `read_manifest`, so checked against the ledger) recorded; None when the version kept no such file."""
    want = (manifest.get("evidence") or {}).get(name)
    path = store.path("versions", f"v{version:04d}", "evidence", name)
    if want is None or not store.fs.exists(path):
        return None
    raw = store.fs.cat_file(path)
    if _sha(raw) != want:
        raise CheckFailed(f"v{version}: evidence {name} altered (sha256 differs from the manifest's)")
    return raw


def private_copy(store: Store, version: int, reg: dict[str, Any], dest: Path) -> dict[str, Any]:
    """Copy the files of a registered version into `dest` (a new folder only this process writes), each
    byte hashed as it is copied, and return its manifest, only if the copy holds exactly the files the
    (ledger-checked) manifest names: what is loaded from `dest` is what was verified, whatever happens
    to the registry meanwhile."""
    manifest = read_manifest(store, version, reg)
    with tempfile.TemporaryDirectory(prefix="registry-download-") as scratch:
        _, files = copy_tree_hashed(version_dir(store, version, Path(scratch)), dest)
    want = manifest["files"]
    for rel in sorted(set(want) | set(files)):
        if rel not in files:
            raise CheckFailed(f"v{version}: file {rel} missing")
        if rel not in want:
            raise CheckFailed(f"v{version}: unexpected file {rel}")
        if files[rel] != want[rel]:
            raise CheckFailed(f"v{version}: file {rel} altered")
    return manifest


def version_dir(store: Store, version: int, cache: Path | None = None) -> Path:
    """A local directory with the files of `version` (downloaded for remote roots)."""
    src = store.path("versions", f"v{version:04d}", "files")
    if store.local:
        return Path(src)
    cache = cache or Path(tempfile.mkdtemp(prefix="registry-"))
    store.fs.get(src, str(cache / f"v{version:04d}"), recursive=True)
    return cache / f"v{version:04d}"


def champion(store: Store, pinned: int | None = None) -> tuple[Path | None, int | None]:
    """The champion's directory and version; `pinned`: that registered version instead (it must verify)."""
    entries = read_ledger(store)
    current = aliases(entries).get("champion") if pinned is None else pinned
    if current is None:
        return None, None
    if pinned is not None:
        reg = registered(entries).get(pinned)
        if reg is None:
            raise InputError(f"evaluate.compare_with: the registry at {store.base} has no registered version {pinned}")
        require_intact(store, store.base.rstrip("/").rsplit("/", 1)[-1], pinned, reg)
    return version_dir(store, current), current


# ---------------------------------------------------------------- commands

def init(store: Store, by: str | None = None) -> None:
    """Create the ledger with a first entry (idempotent), so that stages can depend on it."""
    with _locked(store):
        entries = read_ledger(store)
        _tidy(store, entries)
        if not entries:
            _append(store, [], {"action": "init", "version": None, "registered": None, "aliases": {},
                                "by": by or _who(), "reason": "registry created"})


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckFailed(f"refusing to promote: no {what} at {path}") from None
    except (OSError, ValueError) as err:
        raise CheckFailed(f"refusing to promote: {what} {path} is unreadable ({type(err).__name__})") from None
    if not isinstance(doc, dict):
        raise CheckFailed(f"refusing to promote: {what} {path} is not a JSON object")
    return doc


def promote(store: Store, model: str, candidate: Path, decision_path: Path, evaluation_path: Path | None,
            by: str | None = None, approved_by: str | None = None, reason: str = "",
            evidence: dict[str, bytes] | None = None, root: Path = Path("."),
            run: dict[str, Any] | None = None) -> dict[str, Any]:
    """Register the candidate (once) and move `champion` to it, only with a passing decision for it.
    `root` and `run` are recorded in the manifest (see `build_manifest`)."""

    decision = _read_json(decision_path, "gate decision")
    if not (candidate / "adapter").is_dir():
        raise InputError(f"no trained candidate at {candidate}; run the train stage first")
    current_hash = content_hash(candidate)
    if decision.get("candidate_hash") != current_hash:
        raise CheckFailed(f"refusing to promote: the gate decision is for candidate "
                          f"{str(decision.get('candidate_hash'))[:12]}, not {current_hash[:12]}")
    if decision.get("passed") is not True:
        rules = decision.get("rules") if isinstance(decision.get("rules"), list) else []
        failed = [str(r.get("rule")) for r in rules if isinstance(r, dict) and not r.get("passed")]
        raise CheckFailed(f"refusing to promote: the gate failed ({', '.join(failed) or 'no rules'})")
    evaluation = (_read_json(evaluation_path, "evaluation") if evaluation_path and evaluation_path.exists()
                  else None)
    by = by or _who()
    with _locked(store):
        entries = read_ledger(store)
        _tidy(store, entries)
        known = {v["candidate_hash"]: n for n, v in registered(entries).items()}
        current = aliases(entries)
        version = known.get(current_hash)
        if version is not None and current.get("champion") == version:
            print(f"{model} v{version} is already champion; nothing to do", file=sys.stderr)
            return {"version": version, "changed": False}
        reg = None
        try:
            if version is None:
                version = max(registered(entries), default=0) + 1
                manifest = build_manifest(model, version, candidate, decision, evaluation, by, evidence, root, run)
                reg = {"version": version, "candidate_hash": current_hash,
                       "manifest_sha256": _store_version(store, version, candidate, manifest, evidence)}
            else:
                require_intact(store, model, version, registered(entries)[version])
            moved = {**current, "champion": version}
            if current.get("champion") is not None:
                moved["previous"] = current["champion"]
            entry = _append(store, entries, {"action": "promote", "version": version, "registered": reg,
                                             "aliases": moved, "by": by, "approved_by": approved_by,
                                             "reason": reason or "passed gate"})
        except BaseException:  # a full disk, a kill: leave nothing the ledger does not name
            if reg is not None or store.fs.exists(store.path(PENDING)):
                with contextlib.suppress(Exception):
                    _tidy(store, read_ledger(store))
            raise
        if reg is not None:
            store.fs.rm(store.path(PENDING))
    print(f"promoted {model} v{version} to champion (ledger entry {entry['seq']})", file=sys.stderr)
    return {"version": version, "changed": True, "registered": reg is not None, "entry": entry}


def require_intact(store: Store, model: str, version: int, reg: dict[str, Any]) -> None:
    problems = verify_version(store, version, reg)
    if problems:
        raise CheckFailed(f"refusing to use {model} v{version} (for an alias, or to serve): it fails verification "
                          f"({problems[0]}" + (f"; +{len(problems) - 1} more)" if len(problems) > 1 else ")"))


def move_alias(store: Store, model: str, alias: str, to_version: int | None, reason: str,
               by: str | None = None, run: str | None = None) -> dict[str, Any]:
    """Point `alias` at a registered version that verifies. For `champion`, the default target is
    `previous` (a rollback) and `previous` then points at the version being replaced."""
    from pipelines.core.config import check_reason

    reason = check_reason(reason)
    if not alias or not isinstance(alias, str) or len(alias) > 64:
        raise InputError("alias name must be 1 to 64 characters")
    with _locked(store):
        entries = read_ledger(store)
        _tidy(store, entries)
        current = aliases(entries)
        if alias == "champion" and to_version is None:
            to_version = current.get("previous")
            if to_version is None:
                raise CheckFailed(f"cannot roll back {model}: no previous version")
        if to_version not in registered(entries):
            raise CheckFailed(f"{model} has no registered version {to_version}")
        require_intact(store, model, to_version, registered(entries)[to_version])
        moved = {**current, alias: to_version}
        if alias == "champion" and current.get("champion") not in (None, to_version):
            moved["previous"] = current["champion"]
        action = "rollback" if alias == "champion" else "alias"
        entry = _append(store, entries, {"action": action, "version": to_version, "registered": None,
                                         "aliases": moved, "by": by or _who(), "reason": reason,
                                         **({"run": run} if run else {})})
    print(f"{model}: {alias} -> v{to_version} ({action}, ledger entry {entry['seq']})", file=sys.stderr)
    return entry


def record_lineage_commit(store: Store, version: int, commit: str, branch: str, run: str | None = None,
                          by: str | None = None) -> dict[str, Any]:
    """Anchor a lifecycle run's lineage commit for `version` in the ledger (aliases unchanged), so that
    `pipelines lineage` can tell when the git branch holding the evidence was moved or rewritten."""
    with _locked(store):
        entries = read_ledger(store)
        if version not in registered(entries):
            raise CheckFailed(f"no registered version {version} to record a lineage commit for")
        return _append(store, entries, {"action": "lineage", "version": version, "registered": None,
                                        "aliases": aliases(entries), "by": by or _who(),
                                        "reason": f"evidence committed to git branch {branch}",
                                        "lineage_commit": commit, "lineage_branch": branch,
                                        **({"run": run} if run else {})})


def rotate_key(store: Store, new_key: str, retire: bool = False, by: str | None = None) -> dict[str, Any]:
    """Introduce `new_key` (base64 raw Ed25519 public key), in an entry signed by the current key;
    `retire`: the current key signs nothing after it."""
    with _locked(store):
        entries = read_ledger(store)
        return _append(store, entries, {"action": "rotate_key", "version": None, "registered": None,
                                        "aliases": aliases(entries), "by": by or _who(), "new_key": new_key,
                                        "retire_key": retire, "reason": "signing key rotated"})


def lineage_commits(entries: list[dict[str, Any]], version: int) -> list[dict[str, Any]]:
    return [e for e in entries if e.get("action") == "lineage" and e.get("version") == version]


def read_manifest(store: Store, version: int, reg: dict[str, Any]) -> dict[str, Any]:
    """The manifest of a registered version, only if its sha256 is the one the ledger recorded."""
    path = store.path("versions", f"v{version:04d}", "manifest.json")
    if not store.fs.exists(path):
        raise CheckFailed(f"v{version}: manifest missing")
    raw = store.fs.cat_file(path)
    if _sha(raw) != reg["manifest_sha256"]:
        raise CheckFailed(f"v{version}: manifest.json altered")
    try:
        manifest = json.loads(raw)
        if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
            raise ValueError
    except ValueError:
        raise CheckFailed(f"v{version}: manifest.json is not a manifest object") from None
    return manifest


def verify_version(store: Store, version: int, reg: dict[str, Any]) -> list[str]:
    """Every problem of one version: its manifest against the ledger, its files and evidence against the manifest."""
    try:
        manifest = read_manifest(store, version, reg)
    except CheckFailed as err:
        return [str(err)]
    problems: list[str] = []
    vdir = store.path("versions", f"v{version:04d}")
    evidence = manifest.get("evidence") if isinstance(manifest.get("evidence"), dict) else {}
    for name, digest in evidence.items():
        path = f"{vdir}/evidence/{name}"
        if not store.fs.exists(path):
            problems.append(f"v{version}: evidence {name} missing")
        elif _sha(store.fs.cat_file(path)) != digest:
            problems.append(f"v{version}: evidence {name} altered")
    files = manifest["files"]
    present = ({p[len(vdir) + len("/files/"):] for p in store.fs.find(vdir + "/files")}
               if store.fs.exists(vdir + "/files") else set())
    for rel, digest in files.items():
        if rel not in present:
            problems.append(f"v{version}: file {rel} missing")
        elif _sha(store.fs.cat_file(f"{vdir}/files/{rel}")) != digest:
            problems.append(f"v{version}: file {rel} altered")
    for rel in sorted(present - set(files)):
        problems.append(f"v{version}: unexpected file {rel}")
    return problems


def verify(store: Store) -> list[str]:
    """Every problem found, first the first: the ledger's shape, chain and head; manifests, files and
    evidence of every version; aliases; version directories the ledger does not name."""
    try:
        entries = read_ledger(store)
    except CheckFailed as err:
        return [str(err)]
    problems: list[str] = []
    known = registered(entries)
    for version, reg in sorted(known.items()):
        problems += verify_version(store, version, reg)
    for name, version in aliases(entries).items():
        if version not in known:
            problems.append(f"alias {name} points at unregistered version {version}")
    if store.local:
        base = Path(store.base)
        problems += [f"{p.relative_to(base)}: temp file left by an interrupted write (removed by the next registry "
                     "write)" for p in sorted([*base.glob(".*.tmp"), *base.glob("versions/.*.tmp")])]
    for name in sorted(_version_dirs(store) - {f"v{v:04d}" for v in known}):
        note = (f"left by an interrupted promotion ({PENDING}), removed by the next registry write"
                if _pending(store) == int(name[1:]) else "never removed automatically: a ledger cut short, or put "
                "there by hand; remove it yourself once you know which")
        problems.append(f"{name}: version directory not named by the ledger ({note})")
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
    """The manifest of a registered version (checked against the ledger's manifest_sha256)."""
    reg = registered(read_ledger(store)).get(version)
    if reg is None:
        raise InputError(f"no registered version {version}")
    return read_manifest(store, version, reg)
