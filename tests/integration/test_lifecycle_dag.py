"""The real lifecycle__<model> / rollback DAGs under `airflow dags test` (SQLite) on a throw-away copy
of the platform: promotion, a verified lineage chain, the user's checkout untouched (every task in a
checkout of its own), a challenger with form params, a gate rejection with reasons and the unchanged
stages restored from DVC's run-cache, a deterministic failure that is not retried, a rollback, bad
form values refused, and tampering named by `pipelines lineage`. The registry's ledger is signed
(registry.trusted_keys): the promoting tasks sign with a key file outside the registry, and a worker
without it cannot write. OpenLineage is on (file transport): every task reports what it read and wrote."""
from __future__ import annotations

import json
import sys

import pytest
import yaml

from pipelines.devtools import airflow_local
from pipelines.registry import signing
from pipelines.registry import store as registry
from tests.lifecycle_support import (
    airflow_env,
    dags_test,
    drop,
    last_record,
    make_project,
    pipelines,
    run_refs,
    sh,
    user_state,
)

pytestmark = pytest.mark.integration
STAGES = {"validate", "prepare", "train", "evaluate", "gate"}
DAG = "lifecycle__text-classifier"
MODEL = "projects/text-classifier"
PEM = signing.new_key_pem()
PUBLIC = signing.public_key(signing.load_key(PEM, "test"))


@pytest.fixture(scope="module")
def key_file(tmp_path_factory):
    """The promoting component's private key: a file outside the project and its registry."""
    path = tmp_path_factory.mktemp("keys") / "registry.pem"
    path.write_bytes(PEM)
    path.chmod(0o600)  # a key others could read is refused
    return path


@pytest.fixture(scope="module")
def ol_events(tmp_path_factory):
    """Airflow's [openlineage] section (as its env vars): the file transport, one JSON event per line."""
    path = tmp_path_factory.mktemp("openlineage") / "events.jsonl"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIRFLOW__OPENLINEAGE__TRANSPORT", json.dumps({"type": "file", "log_file_path": str(path),
                                                                 "append": True}))
        mp.setenv("AIRFLOW__OPENLINEAGE__NAMESPACE", "lifecycle-test")
        yield path


@pytest.fixture(scope="module")
def repo(tmp_path_factory, key_file, ol_events):
    repo = make_project(tmp_path_factory.mktemp("lifecycle"),
                        registry={"trusted_keys": [PUBLIC], "signing_key_file": str(key_file)})
    airflow_local.setup(repo)
    return repo


def ledger(repo):
    return (repo / "registry" / "text-classifier" / "ledger.jsonl").read_text()


def champion(repo) -> int:
    return json.loads(ledger(repo).splitlines()[-1])["aliases"]["champion"]


def asset_events(repo) -> list[dict]:
    """The Asset events in Airflow's metadata DB, oldest first: name and extra."""
    probe = ("import json; from airflow.utils.session import create_session; "
             "from airflow.models.asset import AssetEvent, AssetModel\n"
             "with create_session() as s:\n"
             "    rows = s.query(AssetEvent, AssetModel).join(AssetModel, AssetEvent.asset_id == AssetModel.id)"
             ".order_by(AssetEvent.id).all()\n"
             "    print(json.dumps([{'name': a.name, 'extra': e.extra} for e, a in rows]))")
    out = sh(sys.executable, "-c", probe, cwd=repo, env=airflow_env(repo)).stdout
    return json.loads(out.strip().splitlines()[-1])


def git(repo, *args) -> str:
    return sh("git", *args, cwd=repo).stdout.strip()


def model_cli(repo, *args, check=True):
    return pipelines(repo, "--model", "text-classifier", *args, check=check)


def test_first_run_promotes_and_leaves_a_verified_lineage(repo, ol_events):
    before, params_before = user_state(repo), (repo / MODEL / "params.yaml").read_bytes()
    proc = dags_test(repo, DAG)
    assert proc.returncode == 0, proc.stdout[-4000:]
    record = last_record(repo)
    assert record["gate"]["passed"] and record["promotion"] == {
        "model": "text-classifier", "version": 1, "changed": True, "registered": True, "approved_by": None}
    assert record["finished"] is True and set(record["stages"]) == STAGES
    # the user's branch, index, files and params are untouched; every task committed to the run's ref
    assert user_state(repo) == before and (repo / MODEL / "params.yaml").read_bytes() == params_before
    assert not (repo / MODEL / "dvc.lock").exists() and not (repo / MODEL / "data" / "raw.dvc").exists()
    ref = run_refs(repo, "text-classifier")[-1]
    subjects = git(repo, "log", "--format=%s", f"{ref}", f"^{before[0]}").splitlines()
    assert [s.split(": ", 1)[1].split(" ")[0] for s in reversed(subjects)] == [
        "snapshot", "validate", "prepare", "train", "evaluate", "gate", "promoted", "lineage", "finished"]
    assert set(yaml.safe_load(git(repo, "show", f"{ref}:{MODEL}/dvc.lock"))["stages"]) == STAGES
    assert git(repo, "rev-parse", "lineage") == record["lineage_commit"]
    committed = git(repo, "ls-tree", "-r", "--name-only", "lineage").split()
    assert {f"{MODEL}/dvc.lock", f"{MODEL}/data/raw.dvc", f"{MODEL}/reports/gate/decision.json",
            "lineage/run.json"} <= set(committed)
    assert list((repo / ".dvc-storage" / "files" / "md5").iterdir()), "nothing was pushed to the DVC remote"
    chain = json.loads(model_cli(repo, "lineage", "--json").stdout)
    assert chain["verified"] is True and chain["version"] == 1
    orchestration = chain["links"][-1]
    assert orchestration["dag_id"] == DAG and orchestration["run_id"] == record["run_id"]
    assert [link["step"] for link in chain["links"]] == ["registry", "gate", "evaluation", "training", "prepared",
                                                         "validation", "raw", "evidence_branch", "orchestration"]
    assert chain["links"][-2]["status"] == "ok" and chain["links"][-2]["commit"] == record["lineage_commit"]
    assert "champion v1" in pipelines(repo, "models").stdout
    # every ledger entry is signed by the promoting tasks' key; git keeps the head the run saw
    entries = [json.loads(line) for line in ledger(repo).splitlines()]
    assert [e["action"] for e in entries] == ["init", "promote", "lineage"]
    assert all(e["signature"]["key"] == PUBLIC for e in entries)
    assert json.loads(git(repo, "show", "lineage:lineage/run.json"))["ledger_head"]["seq"] == 2
    assert record["ledger_head"] == {"seq": 3, "hash": entries[-1]["hash"]}  # after the anchor, on the run's ref
    kept = git(repo, "for-each-ref", "--format=%(refname)", "refs/registry/text-classifier/")
    assert json.loads(git(repo, "show", f"{kept}:head.json")) == record["ledger_head"]  # every write's head, in git
    # the champion Asset's event says what was promoted (the Airflow UI shows it on the Asset)
    reg = json.loads(ledger(repo).splitlines()[1])["registered"]
    event = asset_events(repo)[-1]
    assert event["name"] == "champion__text-classifier" and event["extra"] == {
        "model": "text-classifier", "version": 1, "changed": True, "registered": True, "approved_by": None,
        "manifest_sha256": reg["manifest_sha256"], "candidate_hash": reg["candidate_hash"],
        "gate": record["gate"]["summary"], "run_id": record["run_id"]}
    # what the run's compute cost: each stage's wall time at its hardware's price (train on cost.train_on)
    spent = record["compute"]
    assert set(spent["tasks"]) == STAGES and spent["unknown"] == [] and spent["usd"] > 0
    assert spent["tasks"]["train"]["hardware"] == "cpu-2vcpu"
    train_report = json.loads(git(repo, "show", f"lineage:{MODEL}/reports/train/metrics.json"))
    assert spent["trained_tokens"] == train_report["train_tokens"] > 0  # the tokens it trained on
    assert spent["tasks"]["train"]["usd"] == pytest.approx(spent["tasks"]["train"]["seconds"] / 3600 * 0.0816)
    assert record["note"].endswith(f"compute {spent['seconds']:.0f} s, ${spent['usd']:.4f}")
    listed, = json.loads(pipelines(repo, "--model", "text-classifier", "cost", "--runs", "--json").stdout)
    assert listed["usd"] == pytest.approx(spent["usd"]) and listed["runs"][0]["run_id"] == record["run_id"]
    # the routing threshold its evaluation tuned travels with the version, and serving uses it
    assert "evaluate_routing.json" in json.loads(
        (repo / "registry" / "text-classifier" / "versions" / "v0001" / "manifest.json").read_text())["evidence"]
    tuned, = json.loads(model_cli(repo, "route", "tune", "--json").stdout)
    assert tuned["champion"] == 1 and tuned["upstream"]["accuracy"] == 0.85 and len(tuned["frontier"]) == 101
    assert tuned["serving"] == {"threshold": tuned["threshold"],
                                "source": "tuned by the version's evaluation (its routing evidence)"}
    assert (repo / MODEL / "reports" / "route" / "tune.json").is_file()
    assert "<- chosen, served" in model_cli(repo, "route", "tune").stdout
    check_openlineage(repo, ol_events, record)


def check_openlineage(repo, path, record):
    """The run's OpenLineage events: a START and a COMPLETE per task; the datasets connected from the
    raw drop to the served alias; the facets' hashes those of the registry's manifest and ledger."""
    events = [json.loads(line) for line in path.read_text().splitlines()]
    tasks = [e for e in events if e["job"]["name"].startswith(f"{DAG}.")]
    kinds: dict[str, list[str]] = {}
    for e in tasks:
        kinds.setdefault(e["job"]["name"].split(".", 1)[1], []).append(e["eventType"])
    ran = STAGES | {"snapshot", "decide", "promote", "notify_serving", "lineage", "finish"}  # approve: skipped
    assert kinds == {task: ["START", "COMPLETE"] for task in ran}, kinds
    assert {e["job"]["namespace"] for e in events} == {"lifecycle-test"}
    done = {e["job"]["name"].split(".", 1)[1]: e for e in tasks if e["eventType"] == "COMPLETE"}
    assert all(done[t]["run"]["facets"]["mlops_run"]["run_id"] == record["run_id"] for t in STAGES)
    # connected: follow outputs into the tasks that read them, from the raw drop to the served alias
    key = lambda d: (d["namespace"], d["name"], d["facets"].get("version", {}).get("datasetVersion"))  # noqa: E731
    reached, frontier = set(), [key(d) for d in done["snapshot"]["outputs"]]
    while frontier:
        reached |= set(frontier)
        frontier = [key(o) for e in done.values() if {key(i) for i in e.get("inputs", [])} & reached
                    for o in e.get("outputs", []) if key(o) not in reached]
    names = {name for _, name, _ in reached}
    assert {f"{MODEL}/data/prepared", f"{MODEL}/models/candidate", f"{MODEL}/reports/gate/decision.json",
            "text-classifier/v0001", "text-classifier@champion"} <= names, names
    # the facets carry what the registry and the evidence hold
    entry = json.loads(ledger(repo).splitlines()[1])
    manifest = json.loads((repo / "registry" / "text-classifier" / "versions" / "v0001" / "manifest.json").read_text())
    version = next(o for o in done["promote"]["outputs"] if o["name"] == "text-classifier/v0001")["facets"]
    assert version["mlops_registryVersion"]["manifest_sha256"] == entry["registered"]["manifest_sha256"]
    assert version["mlops_registryVersion"]["signed_by"] == entry["signature"]["key"] == PUBLIC
    for field in ("candidate_hash", "adapter_sha256", "base_hash", "data_version"):
        assert version["mlops_registryVersion"][field] == manifest[field], field
    raw, = done["snapshot"]["outputs"]
    stored_raw = yaml.safe_load((repo / "registry" / "text-classifier" / "versions" / "v0001" / "evidence" /
                                 "raw.dvc").read_text())
    assert raw["facets"]["mlops_contentHash"]["hash"] == stored_raw["outs"][0]["md5"]
    gx = next(o for o in done["validate"]["outputs"] if o["name"].endswith("result.json"))["facets"]
    assert gx["mlops_gxValidation"]["success"] is True
    decision = next(o for o in done["gate"]["outputs"] if o["name"].endswith("decision.json"))["facets"]
    assert decision["mlops_gateDecision"]["passed"] is True
    assert decision["mlops_gateDecision"]["candidate_hash"] == manifest["candidate_hash"]


def test_new_drop_with_form_params_trains_a_challenger(repo):
    before = user_state(repo)
    drop(repo, "text-classifier", rows=300, seed=1)
    proc = dags_test(repo, DAG, {"epochs": 3, "lora_rank": 8, "learning_rate": 0.003})
    assert proc.returncode == 0, proc.stdout[-4000:]
    record = last_record(repo)
    assert record["snapshot"]["overrides"]["train"] == {"epochs": 3, "learning_rate": 0.003,
                                                        "lora": {"r": 8, "alpha": 16.0, "dropout": 0.05,
                                                                 "target_modules": None}}
    assert len(record["snapshot"]["files"]) == 2 and record["gate"]["champion_version"] == 1
    assert record["snapshot"]["champion"] == 1 and record["promotion"]["version"] == 2 and champion(repo) == 2
    # the run's values are in its own params (dvc.lock and the lineage commit say so); the user's file never changed
    lock = yaml.safe_load(git(repo, "show", f"lineage:{MODEL}/dvc.lock"))
    assert lock["stages"]["train"]["params"]["params.yaml"]["train"]["epochs"] == 3
    assert yaml.safe_load((repo / MODEL / "params.yaml").read_text())["train"]["epochs"] == 2
    assert user_state(repo) == before
    diff = sh("dvc", "params", "diff", "lineage^1", "lineage", cwd=repo / MODEL).stdout
    assert "train.epochs" in diff


def test_gate_rejection_ends_the_run_without_promotion_and_says_why(repo):
    before = ledger(repo)
    proc = dags_test(repo, DAG, {"epochs": 3, "lora_rank": 8, "learning_rate": 0.003, "min_accuracy": 0.999})
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert "GATE REJECTED" in proc.stdout and "min_accuracy" in proc.stdout
    record = last_record(repo)
    # same data and params as the last run: DVC's run-cache restores them in fresh checkouts
    assert {s: v["ran"] for s, v in record["stages"].items()} == {
        "validate": False, "prepare": False, "train": False, "evaluate": True, "gate": True}
    assert "Stage 'train' is cached - skipping run" in proc.stdout
    assert record["gate"]["passed"] is False and "promotion" not in record
    assert record["note"].startswith("gate rejected candidate") and "min_accuracy" in record["note"]
    assert ledger(repo) == before
    assert json.loads(git(repo, "show", "lineage:lineage/run.json"))["gate"]["passed"] is False


def test_invalid_data_fails_at_once_and_stores_nothing(repo):
    before = ledger(repo)
    bad = drop(repo, "text-classifier", rows=200, seed=7, faulty=True)
    try:
        proc = dags_test(repo, DAG)
    finally:
        bad.unlink()
    assert proc.returncode != 0
    assert "validate failed (not retried)" in proc.stdout
    record = last_record(repo)
    assert record["failed"]["task"] == "validate" and record["note"].startswith("stopped at validate")
    assert ledger(repo) == before and champion(repo) == 2


@pytest.mark.parametrize("conf, field", [({"epochs": 999}, "epochs"), ({"dataset": "../../etc"}, "dataset"),
                                         ({"min_accuracy": 0.1}, "min_accuracy")])
def test_form_values_out_of_bounds_are_refused_before_the_run(repo, conf, field):
    before = ledger(repo)
    proc = dags_test(repo, DAG, conf)
    assert proc.returncode != 0
    assert field in (proc.stdout + proc.stderr) and "Invalid input for param" in (proc.stdout + proc.stderr)
    assert ledger(repo) == before


def rewrite(repo, change) -> None:
    """What a storage admin without the key can do: edit the ledger, recompute every hash and the head."""
    path = repo / "registry" / "text-classifier" / registry.LEDGER
    entries = change([json.loads(line) for line in path.read_text().splitlines()])
    prev = registry.GENESIS
    for e in entries:
        e["prev_hash"], e["hash"] = prev, None
        e["hash"] = prev = registry.entry_hash(e)
    path.write_bytes(b"".join(registry._canonical(e) + b"\n" for e in entries))
    path.with_name(registry.HEAD).write_bytes(registry._canonical({"seq": len(entries), "hash": prev}))


def by_mallory(entries):
    entries[1]["by"] = "mallory"  # who promoted v1; the signatures kept
    return entries


@pytest.mark.parametrize("change, named", [
    (by_mallory, "ledger line 2 (promote): signature does not match the entry"),
    (lambda entries: entries[:-1], "ledger cut short: it has 4 entries, git (project) kept ledger head 5"),
])
def test_a_ledger_rewritten_or_cut_short_without_the_key_is_named(repo, change, named):
    folder = repo / "registry" / "text-classifier"
    saved = {name: (folder / name).read_bytes() for name in (registry.LEDGER, registry.HEAD)}
    assert len(saved[registry.LEDGER].splitlines()) == 5  # init, then promote and lineage for v1 and v2
    try:
        rewrite(repo, change)
        out = model_cli(repo, "lineage", check=False)
        assert out.returncode == 1 and named in out.stderr, out.stderr
        verify = model_cli(repo, "registry", "verify", check=False)
        assert verify.returncode != 0 and named in verify.stderr, verify.stderr
    finally:
        for name, data in saved.items():
            (folder / name).write_bytes(data)
    assert json.loads(model_cli(repo, "lineage", "--json").stdout)["verified"] is True


def test_a_worker_without_the_key_cannot_roll_back_and_nothing_is_written(repo, key_file):
    before = ledger(repo)
    key_file.rename(key_file.with_suffix(".away"))
    try:
        proc = dags_test(repo, "rollback", {"model": "text-classifier", "reason": "no key here"})
    finally:
        key_file.with_suffix(".away").rename(key_file)
    assert proc.returncode != 0 and "registry.signing_key_file" in proc.stdout + proc.stderr
    assert ledger(repo) == before


def test_rollback_dag_moves_champion_back_with_the_reason(repo):
    proc = dags_test(repo, "rollback", {"model": "text-classifier", "reason": "v2 misroutes card refunds"})
    assert proc.returncode == 0, proc.stdout[-4000:]
    last = json.loads(ledger(repo).splitlines()[-1])
    assert last["action"] == "rollback" and last["aliases"]["champion"] == 1
    assert last["reason"] == "v2 misroutes card refunds" and last["run"].startswith("rollback run")


def test_the_audit_report_names_every_decision_and_rejection_and_reverifies_what_served(repo):
    report = json.loads(model_cli(repo, "audit", "--json", "--html", "audit.html").stdout)
    moves = [(d["action"], d["version"]) for d in report["decisions"]]
    assert moves == [("promote", 1), ("promote", 2), ("rollback", 1)] and report["champion"] == 1
    assert report["decisions"][-1]["reason"] == "v2 misroutes card refunds"
    assert all(d["by"] for d in report["decisions"])
    turned_down, = report["rejected"]  # the run whose gate said no (the invalid drop never reached the gate)
    assert turned_down["candidate"] and "min_accuracy" in turned_down["reasons"]
    assert [v["version"] for v in report["versions"]] == [1, 2] and report["verified"] is True
    first = report["versions"][0]
    assert first["gate"]["passed"] is True and first["data"]["md5"] and first["broken"] == []
    page = (repo / MODEL / "audit.html").read_text()
    assert 'id="verdict" class="banner verified"' in page and "v2 misroutes card refunds" in page
    assert "min_accuracy" in page and page.count('class="version"') == 2
    later = json.loads(model_cli(repo, "audit", "--json", "--since", "2999-01-01").stdout)
    assert later["decisions"] == [] and later["rejected"] == [] and later["versions"] == []


@pytest.mark.parametrize("args, says", [
    (["audit", "--model", "nope"], "audit: no model folder projects/nope/"),
    (["audit", "--model", "text-classifier", "--since", "2026-13-01"], "--since: '2026-13-01' is not a date"),
    (["audit", "--model", "../etc"], "invalid model name '../etc'"),
])
def test_audit_bad_input_is_one_line(repo, args, says):
    out = pipelines(repo, *args, check=False)
    assert out.returncode == 2 and says in out.stderr and "Traceback" not in out.stderr


def test_the_rollback_form_refuses_a_missing_reason_and_an_unknown_model(repo):
    before = ledger(repo)
    assert dags_test(repo, "rollback", {"model": "text-classifier"}).returncode != 0  # the reason is required
    assert dags_test(repo, "rollback", {"model": "nope", "reason": "no such model"}).returncode != 0
    assert ledger(repo) == before


@pytest.mark.parametrize("args, message", [(["--alias", "staging"], "alias 'staging' is not set"),
                                           (["--version", "99"], "no registered version 99")])
def test_lineage_of_something_that_is_not_there(repo, args, message):
    proc = model_cli(repo, "lineage", *args, check=False)
    assert proc.returncode == 2 and proc.stderr.startswith(f"error: {message}") and proc.stderr.count("\n") == 1


def test_lineage_names_altered_raw_data(repo):
    chain = json.loads(model_cli(repo, "lineage", "--json").stdout)
    raw = next(link for link in chain["links"] if link["step"] == "raw")
    md5 = raw["files"][0]["md5"]
    obj = repo / ".dvc-storage" / "files" / "md5" / md5[:2] / md5[2:]  # tasks push; the checkout has no cache
    obj.chmod(0o644)
    original = obj.read_bytes()
    obj.write_bytes(original[:-2] + b"x\n")
    try:
        proc = model_cli(repo, "lineage", "--json", check=False)
        assert proc.returncode == 1
        assert json.loads(proc.stdout)["verified"] is False
        assert "raw altered" in proc.stderr and proc.stderr.count("\n") == 1
    finally:
        obj.write_bytes(original)
    assert model_cli(repo, "lineage").returncode == 0


def test_keygen_and_key_rotation_from_the_command_line(repo, tmp_path):
    model_cli(repo, "registry", "init")  # no-op after the runs above
    new = tmp_path / "next.pem"
    public = model_cli(repo, "registry", "keygen", "--out", str(new)).stdout.strip()  # outside the project
    assert oct(new.stat().st_mode & 0o777) == "0o600" and signing.public_key(
        signing.load_key(new.read_bytes(), "test")) == public
    again = model_cli(repo, "registry", "keygen", "--out", str(new), check=False)
    assert again.returncode == 2 and "exists; a key is never overwritten" in again.stderr
    assert again.stderr.count("\n") == 1 and signing.public_key(signing.load_key(new.read_bytes(), "t")) == public
    before = ledger(repo)
    bad = model_cli(repo, "registry", "rotate-key", "--new-key", "bm90LWEta2V5", check=False)
    assert bad.returncode == 2 and "is not a base64 Ed25519 public key" in bad.stderr and ledger(repo) == before
    model_cli(repo, "registry", "rotate-key", "--new-key", public)  # signed by the current key (the key file)
    last = json.loads(ledger(repo).splitlines()[-1])
    assert (last["action"], last["new_key"], last["signature"]["key"]) == ("rotate_key", public, PUBLIC)
    assert model_cli(repo, "registry", "verify").returncode == 0


def test_a_version_promoted_again_keeps_the_lineage_of_the_run_that_trained_it(repo):
    """After the rollback to v1, a run whose candidate is byte-identical to v2 (the same data and training,
    restored from DVC's run-cache) but judged under another gate threshold promotes v2 again: v2's lineage
    still points at the run that trained it, and verifies."""
    assert champion(repo) == 1
    anchors = [e for e in map(json.loads, ledger(repo).splitlines()) if e["action"] == "lineage"]
    proc = dags_test(repo, DAG, {"epochs": 3, "lora_rank": 8, "learning_rate": 0.003, "min_accuracy": 0.5})
    assert proc.returncode == 0, proc.stdout[-4000:]
    record = last_record(repo)
    assert record["promotion"] == {"model": "text-classifier", "version": 2, "changed": True, "registered": False,
                                   "approved_by": None}
    last = [json.loads(line) for line in ledger(repo).splitlines()]
    assert last[-1]["action"] == "promote" and last[-1]["registered"] is None and champion(repo) == 2
    assert [e for e in last if e["action"] == "lineage"] == anchors  # no anchor for a version it did not train
    chain = json.loads(model_cli(repo, "lineage", "--version", "2", "--json").stdout)
    assert chain["verified"] is True, [link for link in chain["links"] if link["status"] != "ok"]
