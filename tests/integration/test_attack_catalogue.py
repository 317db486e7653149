"""The red-team catalogue (issue 10), one row per attack, so that no later change brings one back.

Each CLI row runs `python -m pipelines ...` in a small project that has everything an attack could
hit: raw drops, a registry with two versions, a DVC directory and local remote, a git directory, and a
directory outside the project. A row names the expected exit code and a phrase of the one-line error;
every row then checks, by sha256, that nothing protected changed.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipelines.registry import signing
from pipelines.registry import store as registry
from tests.conftest import cli_env
from tests.integration.test_registry import make_candidate

pytestmark = pytest.mark.integration
MODEL = "text-classifier"
PROTECTED = ("registry", "data/raw", ".dvc", ".dvc-storage", ".git", "../outside", "params.yaml", "dvc.yaml", "golden")


def _snapshot(project: Path) -> dict[str, str]:
    out = {}
    for name in PROTECTED:
        base = project / name
        files = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file())
        for f in files:
            out[str(f.relative_to(project.parent))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("catalogue")
    proj = root / "project"
    proj.mkdir()
    (root / "outside").mkdir()
    (root / "outside" / "keep.txt").write_text("someone else's file")
    subprocess.run(["git", "init", "-q"], cwd=proj, check=True)
    (proj / ".dvc").mkdir()
    (proj / ".dvc" / "config").write_text("[core]\n    remote = local\n['remote \"local\"']\n    url = ../.dvc-storage\n")
    (proj / ".dvc-storage" / "files" / "md5" / "ab").mkdir(parents=True)
    (proj / ".dvc-storage" / "files" / "md5" / "ab" / "cdef").write_text("a stored object")
    (proj / "params.yaml").write_text(yaml.safe_dump({"registry": {"root": "registry", "model_name": MODEL},
                                                      "validate": {"min_examples_per_label": 1},
                                                      "evaluate": {"holdout": "golden/holdout.csv"}}))
    (proj / "dvc.yaml").write_text("stages: {}\n")
    (proj / "golden").mkdir()
    (proj / "golden" / "holdout.csv").write_text("text,label\nreviewed,a\n")
    (root / "outside" / "params.yaml").write_text("registry: {model_name: another-model}\n")
    proc = subprocess.run([sys.executable, "-m", "pipelines", "sample", "--out", "data/raw", "--rows", "200"],
                          cwd=proj, env=cli_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    store = registry.open_store(str(proj / "registry"), MODEL)
    registry.init(store)
    for name in ("c1", "c2"):
        cand, decision = make_candidate(root, name)
        registry.promote(store, MODEL, cand, decision, None)
    (proj / "bad.decision.json").write_text("{not json")
    (proj / "list.decision.json").write_text("[1, 2]")
    (proj / "dup.yaml").write_text("data:\n  raw: data/raw\ndata:\n  raw: elsewhere\n")
    for name, section in (("outside.yaml", {"validate": {"report_dir": "../outside"}}),
                          ("neg-seed.yaml", {"train": {"seed": -1}}),
                          ("ckpt-registry.yaml", {"train": {"checkpoint_dir": "registry"}}),
                          ("train-report-raw.yaml", {"train": {"report_dir": "data/raw"}}),
                          ("eval-registry.yaml", {"evaluate": {"report_dir": "registry"}}),
                          ("gate-raw.yaml", {"gate": {"decision_path": "data/raw/drop-0000.csv"}}),
                          ("prepare-git.yaml", {"prepare": {"output_dir": ".git"}}),
                          ("root-raw.yaml", {"registry": {"root": "data/raw"}}),
                          ("root-in-git.yaml", {"registry": {"root": ".git/registry"}}),
                          ("root-project.yaml", {"registry": {"root": "."}}),
                          ("key-open.yaml", {"registry": {"root": "registry", "signing_key_file": "open.pem"}})):
        (proj / name).write_text(yaml.safe_dump({"registry": {"root": "registry"}, **section}))
    (proj / "open.pem").write_bytes(signing.new_key_pem())
    (proj / "open.pem").chmod(0o644)  # a private key others can read
    (proj / "inbox").mkdir()
    (proj / "inbox" / "cr.csv").write_bytes(b"text,label\rhello,a\rhi,b\r")
    (proj / "inbox" / "wide.csv").write_bytes(b"text," + b"x" * 140_000 + b"\nhello,a\n")
    return proj


# (id, argv, exit code, phrase in the one-line error)
CLI_ROWS = [
    ("validate-report-into-registry", ["validate", "--report-dir", "registry"], 2, "model registry"),
    ("validate-report-into-raw", ["validate", "--report-dir", "data/raw"], 2, "raw data"),
    ("validate-report-around-raw", ["validate", "--report-dir", "data"], 2, "raw data"),
    ("validate-report-project-root", ["validate", "--report-dir", "."], 2, "project root"),
    ("validate-report-git", ["validate", "--report-dir", ".git"], 2, "git directory"),
    ("validate-report-dvc-cache", ["validate", "--report-dir", ".dvc/cache"], 2, "DVC cache"),
    ("validate-report-dvc-remote", ["validate", "--report-dir", ".dvc-storage"], 2, "DVC cache or remote"),
    ("validate-report-outside", ["validate", "--report-dir", "../outside"], 2, "outside the project"),
    ("validate-report-outside-params", ["--params", "outside.yaml", "validate"], 2, "outside the project"),
    ("validate-quarantine-a-raw-file", ["validate", "--quarantine", "data/raw/drop-0000.csv"], 2, "raw data"),
    ("validate-quarantine-the-ledger", ["validate", "--quarantine", "registry/text-classifier/ledger.jsonl"], 2,
     "model registry"),
    ("validate-quarantine-a-directory", ["validate", "--quarantine", "inbox"], 2, "is a directory"),
    ("prepare-output-registry", ["prepare", "--output-dir", "registry"], 2, "model registry"),
    ("prepare-output-raw", ["prepare", "--output-dir", "data/raw"], 2, "raw data"),
    ("prepare-output-git-params", ["--params", "prepare-git.yaml", "prepare"], 2, "git directory"),
    ("train-output-registry", ["train", "--output-dir", "registry"], 2, "model registry"),
    ("train-checkpoints-registry", ["--params", "ckpt-registry.yaml", "train"], 2, "model registry"),
    ("train-report-raw", ["--params", "train-report-raw.yaml", "train"], 2, "raw data"),
    ("evaluate-report-registry", ["--params", "eval-registry.yaml", "evaluate"], 2, "model registry"),
    ("gate-decision-over-raw", ["--params", "gate-raw.yaml", "gate"], 2, "raw data"),
    ("lineage-html-a-directory", ["lineage", "--html", "inbox"], 2, "is a directory"),
    ("lineage-html-into-registry", ["lineage", "--html", "registry/x.html"], 2, "model registry"),
    ("sample-overwrites-a-drop", ["sample", "--out", "data/raw/drop-0000.csv", "--seed", "7", "--rows", "50"], 2,
     "refusing to overwrite"),
    ("params-file-missing", ["--params", "paramz.yaml", "validate"], 2, "params file paramz.yaml not found"),
    ("params-duplicate-section", ["--params", "dup.yaml", "validate"], 2, "duplicate key 'data'"),
    ("params-negative-seed", ["--params", "neg-seed.yaml", "train"], 2, "train.seed"),
    ("prepare-negative-seed-flag", ["prepare", "--seed", "-3"], 2, "seed"),
    ("csv-cr-only-line-endings", ["validate", "inbox/cr.csv", "--report-dir", "reports/x"], 2, "CR-only"),
    ("csv-header-too-wide", ["validate", "inbox/wide.csv", "--report-dir", "reports/x"], 2, "header line"),
    ("model-name-path-traversal", ["registry", "list", "--model", "../../x"], 2, "invalid model name"),
    ("rollback-model-path-traversal", ["rollback", "--model", "../x", "--reason", "why not"], 2, "invalid model name"),
    ("rollback-empty-reason", ["rollback", "--reason", ""], 2, "reason must be"),
    ("alias-without-reason", ["registry", "alias", "--name", "canary", "--version", "1"], 2, "reason must be"),
    ("promote-malformed-decision", ["promote", "--decision", "bad.decision.json", "--candidate", "../c1"], 1,
     "unreadable"),
    ("promote-decision-not-object", ["promote", "--decision", "list.decision.json", "--candidate", "../c1"], 1,
     "not a JSON object"),
    ("rollback-to-unknown-version", ["rollback", "--to-version", "9", "--reason", "typo test"], 1,
     "no registered version 9"),
    # round two (issue 26): outputs never overwrite inputs, whatever --allow-outside-project says
    ("lineage-html-over-params", ["lineage", "--html", "params.yaml"], 2, "platform's configuration"),
    ("audit-html-over-dvc-yaml", ["audit", "--html", "dvc.yaml"], 2, "platform's configuration"),
    ("validate-quarantine-over-params", ["validate", "--quarantine", "params.yaml"], 2, "platform's configuration"),
    ("validate-quarantine-over-golden", ["validate", "--quarantine", "golden/holdout.csv"], 2, "reviewed golden set"),
    ("sample-over-params", ["sample", "--out", "params.yaml"], 2, "platform's configuration"),
    ("sample-over-the-golden-set", ["sample", "--out", "golden/holdout.csv"], 2, "reviewed golden set"),
    ("sample-into-the-registry", ["sample", "--out", "registry/text-classifier"], 2, "model registry"),
    ("sample-negative-rows", ["sample", "--out", "data/raw", "--rows", "-5"], 2, "--rows"),
    ("lineage-html-over-git-head", ["--allow-outside-project", "lineage", "--html", ".git/HEAD"], 2,
     "inside a git directory"),
    ("audit-html-over-git-config", ["--allow-outside-project", "audit", "--html", ".git/config"], 2,
     "inside a git directory"),
    ("lineage-html-over-dvc-config", ["--allow-outside-project", "lineage", "--html", ".dvc/config"], 2, "DVC cache"),
    ("audit-html-over-another-models-params", ["--allow-outside-project", "audit", "--html", "../outside/params.yaml"],
     2, "platform's configuration"),
    ("keygen-over-params", ["registry", "keygen", "--out", "params.yaml"], 2, "platform's configuration"),
    ("keygen-into-the-registry", ["registry", "keygen", "--out", "registry/k.pem"], 2, "model registry"),
    ("keygen-into-raw-data", ["registry", "keygen", "--out", "data/raw/k.pem"], 2, "raw data"),
    ("keygen-into-git", ["registry", "keygen", "--out", ".git/k.pem"], 2, "inside a git directory"),
    # round two: keys and the registry's place
    ("signing-key-readable-by-others", ["--params", "key-open.yaml", "rollback", "--reason", "open key"], 2,
     "readable by others (mode 0644)"),
    ("registry-root-is-the-raw-data", ["--params", "root-raw.yaml", "registry", "list"], 2, "it is the raw data"),
    ("registry-root-in-git", ["--params", "root-in-git.yaml", "registry", "list"], 2, "inside a git directory"),
    ("registry-root-is-the-project", ["--params", "root-project.yaml", "registry", "list"], 2, "it is the project root"),
    ("vllm-promote-unknown-version", ["vllm-promote", "--url", "http://127.0.0.1:9", "--version", "99"], 1,
     "no registered version 99"),
    ("vllm-promote-version-zero", ["vllm-promote", "--url", "http://127.0.0.1:9", "--version", "0"], 2,
     "--version must be"),
]


@pytest.mark.parametrize("argv, code, phrase", [r[1:] for r in CLI_ROWS], ids=[r[0] for r in CLI_ROWS])
def test_cli_attack_is_refused_and_nothing_protected_changes(project, argv, code, phrase):
    before = _snapshot(project)
    proc = subprocess.run([sys.executable, "-m", "pipelines", *argv], cwd=project, env=cli_env(),
                          capture_output=True, text=True, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == code, proc.stderr
    assert lines and lines[-1].startswith("error: ") and phrase in lines[-1], proc.stderr
    assert "Traceback" not in proc.stderr
    assert _snapshot(project) == before


def test_a_broken_pipe_is_not_an_internal_error(project):
    proc = subprocess.run(f"'{sys.executable}' -m pipelines registry list | true", shell=True, cwd=project,
                          env=cli_env(), capture_output=True, text=True, timeout=120)
    assert "internal error" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


# ---------------------------------------------------------------- registry damage

def _lines(ledger: Path) -> list[bytes]:
    return ledger.read_bytes().splitlines(keepends=True)


def _set_field(ledger: Path, line: int, **fields) -> None:
    rows = _lines(ledger)
    entry = json.loads(rows[line - 1])
    entry.update(fields)
    rows[line - 1] = json.dumps(entry).encode() + b"\n"
    ledger.write_bytes(b"".join(rows))


def _append_copy(base: Path, line: int) -> None:
    """Append a copy of a line as the newest entry (its hash and signature kept) and move the head to it."""
    rows = _lines(base / "ledger.jsonl")
    entry = json.loads(rows[line - 1])
    entry["seq"] = len(rows) + 1
    (base / "ledger.jsonl").write_bytes(b"".join(rows) + json.dumps(entry).encode() + b"\n")
    (base / "head.json").write_text(json.dumps({"seq": entry["seq"], "hash": entry["hash"]}))


DAMAGE = [  # (id, what is done to the registry, phrase that `registry verify` must name)
    ("truncated", lambda d: (d / "ledger.jsonl").write_bytes(b"".join(_lines(d / "ledger.jsonl")[:1])), "truncated"),
    ("emptied", lambda d: (d / "ledger.jsonl").write_bytes(b""), "truncated or emptied"),
    ("deleted", lambda d: (d / "ledger.jsonl").unlink(), "ledger is missing"),
    ("last-line-deleted", lambda d: (d / "ledger.jsonl").write_bytes(b"".join(_lines(d / "ledger.jsonl")[:-1])),
     "truncated"),
    ("head-deleted", lambda d: (d / "head.json").unlink(), "no head.json"),
    ("null-line", lambda d: (d / "ledger.jsonl").write_bytes(b"null\n" + b"".join(_lines(d / "ledger.jsonl")[1:])),
     "line 1 is a JSON NoneType"),
    ("list-line", lambda d: (d / "ledger.jsonl").write_bytes(b"[1]\n" + b"".join(_lines(d / "ledger.jsonl")[1:])),
     "line 1 is a JSON list"),
    ("non-utf8-line", lambda d: (d / "ledger.jsonl").write_bytes(b"\xff\xfe\n" + b"".join(_lines(d / "ledger.jsonl")[1:])),
     "line 1 is not UTF-8"),
    ("wrong-type-aliases", lambda d: _set_field(d / "ledger.jsonl", 2, aliases=["champion"]), "line 2: field 'aliases'"),
    ("wrong-type-version", lambda d: _set_field(d / "ledger.jsonl", 2, version="one"), "line 2: field 'version'"),
    # an entry edited (or one appended) reusing a valid hash, and signature: every reader recomputes the chain
    ("entry-edited-hash-kept", lambda d: _set_field(d / "ledger.jsonl", 2, aliases={"champion": 2}),
     "line 2: altered (its content does not hash to its hash)"),
    ("entry-appended-reusing-a-hash", lambda d: _append_copy(d, 2), "line 4: chain broken"),
    ("deeply-nested-line", lambda d: (d / "ledger.jsonl").write_bytes(
        b"[" * 100_000 + b"]" * 100_000 + b"\n" + b"".join(_lines(d / "ledger.jsonl")[1:])), "nested too deeply"),
    ("manifest-not-json", lambda d: (d / "versions/v0001/manifest.json").write_text("{oops"), "v1: manifest.json altered"),
    ("manifest-deleted", lambda d: (d / "versions/v0001/manifest.json").unlink(), "v1: manifest missing"),
    ("unreferenced-version", lambda d: shutil.copytree(d / "versions/v0001", d / "versions/v0009"),
     "v0009: version directory not named by the ledger"),
]


@pytest.fixture
def damaged(project, tmp_path):
    """A private copy of the project's registry to damage."""
    proj = tmp_path / "project"
    proj.mkdir()
    shutil.copytree(project / "registry", proj / "registry")
    (proj / "params.yaml").write_text((project / "params.yaml").read_text())
    return proj


@pytest.mark.parametrize("damage, phrase", [r[1:] for r in DAMAGE], ids=[r[0] for r in DAMAGE])
def test_registry_damage_is_named_and_fails_closed(damaged, damage, phrase):
    base = damaged / "registry" / MODEL
    damage(base)
    run = lambda *a: subprocess.run([sys.executable, "-m", "pipelines", *a], cwd=damaged, env=cli_env(),  # noqa: E731
                                    capture_output=True, text=True, timeout=120)
    verify = run("registry", "verify")
    assert verify.returncode == 1 and phrase in verify.stderr and "Traceback" not in verify.stderr, verify.stderr
    listing = run("registry", "list")
    assert listing.returncode in (0, 1) and "internal error" not in listing.stderr, listing.stderr
    if "version" not in phrase and "manifest" not in phrase:  # the ledger itself is damaged: no state is trusted
        assert listing.returncode == 1
        rollback = run("rollback", "--reason", "after damage")
        assert rollback.returncode == 1, rollback.stderr


def test_aliases_move_only_to_a_version_that_verifies(damaged):
    base = damaged / "registry" / MODEL
    (base / "versions/v0001/files/train_config.json").write_text("{}")
    store = registry.open_store(str(damaged / "registry"), MODEL)
    before = registry.read_ledger(store)
    for argv in (["rollback", "--reason", "go back"], ["registry", "alias", "--name", "canary", "--version", "1",
                                                     "--reason", "try it"]):
        proc = subprocess.run([sys.executable, "-m", "pipelines", *argv], cwd=damaged, env=cli_env(),
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 1 and "fails verification" in proc.stderr, proc.stderr
    assert registry.read_ledger(store) == before


def test_a_write_removes_only_what_an_interrupted_write_noted(damaged):
    base = damaged / "registry" / MODEL
    (base / ".ledger.jsonl.x1.tmp").write_text("torn")
    (base / "versions" / ".v0003.abc.tmp").mkdir()
    shutil.copytree(base / "versions/v0002", base / "versions/v0003")  # a promotion killed before its entry
    (base / "pending.json").write_text('{"version": 3}')  # ... noted it first
    shutil.copytree(base / "versions/v0002", base / "versions/v0007")  # not noted by anyone: never deleted
    store = registry.open_store(str(damaged / "registry"), MODEL)
    problems = registry.verify(store)
    assert any(p.startswith(".ledger.jsonl.x1.tmp: temp file left") for p in problems), problems
    assert any(p.startswith("v0003: version directory not named by the ledger (left by an interrupted") for p in problems)
    assert any(p.startswith("v0007: version directory not named by the ledger (never removed") for p in problems)
    assert registry.aliases(registry.read_ledger(store))["champion"] == 2  # leftovers are never state
    registry.move_alias(store, MODEL, "champion", 1, reason="clean-up test")
    assert [p.split(":")[0] for p in registry.verify(store)] == ["v0007"]
    assert not (base / "versions/v0003").exists() and not list(base.glob(".*.tmp")) and (base / "versions/v0007").is_dir()


def _limited_file_size(limit: int):
    def apply():  # what a full disk does to a writer: the write fails (EFBIG here, ENOSPC there)
        import resource
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_a_full_disk_during_a_promotion_is_one_line_and_leaves_nothing(damaged, tmp_path):
    from pipelines.training.modeling import candidate_hash

    cand, decision = make_candidate(tmp_path, "big")
    (cand / "adapter" / "adapter_model.safetensors").write_bytes(b"\0" * 3_000_000)
    decision.write_text(json.dumps({"candidate_hash": candidate_hash(cand), "passed": True, "rules": []}))
    base = damaged / "registry" / MODEL
    before = {p: p.read_bytes() for p in base.rglob("*") if p.is_file()}
    proc = subprocess.run([sys.executable, "-m", "pipelines", "promote", "--candidate", str(cand), "--decision",
                           str(decision)], cwd=damaged, env=cli_env(), capture_output=True, text=True, timeout=120,
                          preexec_fn=_limited_file_size(1_000_000))
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: File too large"), proc.stderr
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr
    assert {p: p.read_bytes() for p in base.rglob("*") if p.is_file()} == before  # nothing left, nothing changed
    assert registry.verify(registry.open_store(str(damaged / "registry"), MODEL)) == []


def test_vllm_promote_refuses_a_version_that_fails_verification(damaged):
    (damaged / "registry" / MODEL / "versions/v0001/files/train_config.json").write_text("{}")
    proc = subprocess.run([sys.executable, "-m", "pipelines", "vllm-promote", "--url", "http://127.0.0.1:9",
                           "--version", "1"], cwd=damaged, env=cli_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "v1: file train_config.json altered" in proc.stderr, proc.stderr


def test_version_directories_are_readable_by_other_users(tmp_path):
    store = registry.open_store(str(tmp_path / "registry"), MODEL)
    registry.init(store)
    registry.promote(store, MODEL, *make_candidate(tmp_path, "c1"), None)
    paths = [Path(store.base) / "versions" / "v0001", *(Path(store.base) / "versions" / "v0001").rglob("*")]
    assert len(paths) > 3
    for path in paths:
        assert path.stat().st_mode & 0o004, path  # world-readable (umask 022): servers, auditors
