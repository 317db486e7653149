"""The plugin's FastAPI app in-process: pages over a small registry and run records, and no page
without an Airflow login (the full auth path runs against a real api-server in the standalone test)."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from pipelines.orchestration import gitops, records
from pipelines.orchestration.runspace import run_ref_name
from pipelines.registry import store as registry
from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "plugins"))
import mlops_app  # noqa: E402


def _candidate(path, marker: bytes):
    (path / "adapter").mkdir(parents=True)
    (path / "adapter" / "adapter_model.safetensors").write_bytes(marker)
    (path / "train_config.json").write_text(json.dumps({"base_model": "minilm", "base_hash": "h", "params": {}}))
    from pipelines.training.modeling import candidate_hash

    decision = path.parent / f"{path.name}.decision.json"
    decision.write_text(json.dumps({"candidate_hash": candidate_hash(path), "passed": True,
                                    "rules": [{"rule": "min_accuracy", "passed": True}]}))
    return path, decision


def record(repo: Path, model: str, run_id: str, **fields) -> None:
    """Commit a run record to the run's ref, as the lifecycle tasks do."""
    ref = run_ref_name(model, run_id)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        gitops.checkout(work, str(repo), ref if gitops.git(work.parent, "ls-remote", str(repo), ref) else "HEAD")
        records.update(work, run_id=run_id, **fields)
        sha = gitops.commit_all(work, f"record {run_id}", ["lineage/run.json"])
        gitops.push(work, str(repo), sha, ref, expect=None)


def _project(root: Path, model: str) -> None:
    (root / "projects" / model).mkdir(parents=True)
    (root / "projects" / model / "params.yaml").write_text(
        f"registry: {{root: ../../registry, model_name: {model}}}\n")


@pytest.fixture
def client(tmp_path, monkeypatch):
    _project(tmp_path, "text-classifier")
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=tmp_path, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@e", "commit", "-q", "--allow-empty", "-m", "x"],
                   cwd=tmp_path, check=True)
    store = registry.open_store(str(tmp_path / "registry"), "text-classifier")
    registry.init(store, by="tester")
    for i in (1, 2):
        registry.promote(store, "text-classifier", *_candidate(tmp_path / f"c{i}", bytes([i])), None,
                         by="tester", reason=f"run {i}")
    record(tmp_path, "text-classifier", "manual__1", gate={"passed": False, "candidate": "abc123abc123ff",
                                                           "summary": "4/5 rules", "reasons": "min_accuracy: 0.41 < 0.7"})
    monkeypatch.setattr(mlops_app, "REPO", tmp_path)
    monkeypatch.delenv("PIPELINES_GIT_REMOTE", raising=False)
    mlops_app.app.dependency_overrides[mlops_app.airflow_user] = lambda: "tester"
    yield TestClient(mlops_app.app)
    mlops_app.app.dependency_overrides.clear()


def test_models_and_model_pages(client):
    assert client.get("/?format=json").json() == [{"model": "text-classifier", "aliases": {"champion": 2, "previous": 1},
                                                   "versions": [1, 2], "awaiting_approval": []}]
    assert "champion=v2" in client.get("/").text
    page = client.get("/models/text-classifier")
    assert page.status_code == 200 and "<td class=\"bad\">rejected</td>" in page.text
    assert "min_accuracy: 0.41 &lt; 0.7" in page.text  # the failing rule, escaped
    data = client.get("/models/text-classifier?format=json").json()
    assert [v["version"] for v in data["versions"]] == [2, 1] and data["versions"][0]["aliases"] == ["champion"]
    assert data["gate_decisions"][0]["gate"]["passed"] is False and len(data["ledger"]) == 3
    assert client.get("/models/nothing").status_code == 404


def test_run_pages(client):
    assert client.get("/models/text-classifier/runs/manual__1?format=json").json()["gate"]["passed"] is False
    assert "min_accuracy: 0.41" in client.get("/models/text-classifier/runs/manual__1").text
    assert "min_accuracy: 0.41" in client.get("/dags/lifecycle__text-classifier/runs/manual__1").text
    assert client.get("/models/text-classifier/runs/other?format=json").status_code == 404
    assert "left no lifecycle record" in client.get("/models/text-classifier/runs/other").text
    assert client.get("/dags/rollback/runs/manual__1").status_code == 404


def test_a_run_waiting_for_approval_and_one_a_person_rejected(client, tmp_path):
    passed = {"passed": True, "candidate": "cafe01cafe01ff", "summary": "6/6 rules", "reasons": ""}
    record(tmp_path, "text-classifier", "manual__wait", gate=passed, snapshot={"require_approval": True})
    record(tmp_path, "text-classifier", "manual__no", gate=passed, snapshot={"require_approval": True},
           review={"decision": "rejected", "by": "bo", "at": "2026-11-26T13:00:00+00:00"})
    assert client.get("/?format=json").json()[0]["awaiting_approval"] == ["manual__wait"]
    assert "1 run(s)" in client.get("/").text
    decisions = {d["run_id"]: d for d in client.get("/models/text-classifier?format=json").json()["gate_decisions"]}
    link = "/dags/lifecycle__text-classifier/runs/manual__wait/tasks/approve/required_actions"
    assert decisions["manual__wait"]["outcome"] == "awaiting approval" and decisions["manual__wait"]["answer_at"] == link
    assert decisions["manual__no"]["outcome"] == "rejected by bo" and decisions["manual__no"]["answer_at"] is None
    assert "champion keeps serving" in decisions["manual__no"]["why"]
    page = client.get("/models/text-classifier").text
    assert f'<a href="{link}" target="_top">answer in Airflow</a>' in page and "rejected by bo" in page
    run = client.get("/models/text-classifier/runs/manual__wait").text
    assert 'id="approval"' in run and link in run
    rejected = client.get("/models/text-classifier/runs/manual__no").text
    assert 'id="approval"' not in rejected and "bo rejected the promotion at 2026-11-26T13:00:00+00:00" in rejected
    # a run id that needs quoting stays one path segment of the link
    assert mlops_app.approval_link("m", "manual__2026-11-26T10:00:00+00:00").endswith(
        "/runs/manual__2026-11-26T10%3A00%3A00%2B00%3A00/tasks/approve/required_actions")


def test_html_is_escaped(client, tmp_path):
    record(tmp_path, "text-classifier", "x<script>", failed={"task": "validate", "error": "<script>alert(1)</script>"})
    body = client.get("/models/text-classifier").text
    assert "<script>alert(1)" not in body and "&lt;script&gt;alert(1)" in body


def test_no_login_no_page():
    bare = TestClient(mlops_app.app)
    for path in ("/", "/models/text-classifier", "/models/text-classifier/runs/x"):
        assert bare.get(path).status_code == 401


def test_stored_values_are_escaped_on_every_page(client, tmp_path):
    store = registry.open_store(str(tmp_path / "registry"), "text-classifier")
    registry.move_alias(store, "text-classifier", "champion", 1, reason="<img src=x onerror=alert(1)>",
                        by="<b>mallory</b>")
    record(tmp_path, "text-classifier", "run<1>", promotion={"model": "text-classifier", "version": "1<script>"})
    pages = [client.get("/models/text-classifier").text, client.get("/models/text-classifier/runs/run<1>").text]
    for body in pages:
        assert "<img src=x" not in body and "<b>mallory" not in body and "1<script>" not in body
    assert "&lt;img src=x onerror=alert(1)&gt;" in pages[0] and "1&lt;script&gt;" in pages[1]


def test_a_damaged_model_says_what_is_wrong_and_the_others_still_work(client, tmp_path):
    _project(tmp_path, "other-model")
    other = registry.open_store(str(tmp_path / "registry"), "other-model")
    registry.init(other)
    (tmp_path / "registry" / "other-model" / "ledger.jsonl").write_bytes(b"null\n")
    data = client.get("/?format=json").json()
    broken = next(d for d in data if d["model"] == "other-model")
    fine = next(d for d in data if d["model"] == "text-classifier")
    assert "line 1" in broken["error"] and fine["versions"] == [1, 2]
    index = client.get("/")
    assert index.status_code == 200 and "damaged: registry ledger line 1" in index.text
    page = client.get("/models/other-model")
    assert page.status_code == 409 and "damaged" in page.text
    (tmp_path / "registry" / "text-classifier" / "versions" / "v0001" / "manifest.json").unlink()
    page = client.get("/models/text-classifier")
    assert page.status_code == 200 and "v1: manifest missing" in page.text


@pytest.mark.parametrize("model", ["..%2F..%2Fetc", "a..b", "UPPER", "a" * 80])
def test_a_model_name_that_is_not_one_is_404(client, model):
    assert client.get(f"/models/{model}").status_code == 404
    assert client.get(f"/models/{model}/versions/1").status_code == 404


def _promote_with_answers(tmp_path, answers: list[dict]) -> int:
    import io

    import pandas as pd

    buf = io.BytesIO()
    pd.DataFrame(answers).to_parquet(buf, index=False)
    store = registry.open_store(str(tmp_path / "registry"), "text-classifier")
    registry.promote(store, "text-classifier", *_candidate(tmp_path / "c3", b"\x03"), None, by="tester",
                     reason="run 3", evidence={"evaluate_predictions.parquet": buf.getvalue()})
    return 3


def test_a_versions_page_shows_what_it_said_on_its_test_rows(client, tmp_path):
    rows = [{"prompt": "where is my card?", "reference": '{"intent": "card_arrival"}',
             "candidate_answer": '{"intent": "card_arrival"} <script>x</script>', "candidate_rouge_l": 0.75,
             "candidate_json_valid": 1.0, "base_answer": "I am a chatbot", "base_rouge_l": 0.0},
            {"prompt": "refund?", "reference": "{}", "candidate_answer": "{}", "candidate_rouge_l": 1.0,
             "candidate_json_valid": 1.0, "base_answer": None, "base_rouge_l": float("nan")}]
    version = _promote_with_answers(tmp_path, rows)
    data = client.get(f"/models/text-classifier/versions/{version}?format=json").json()
    said = data["answers"]
    assert [r["candidate_answer"] for r in said] == [rows[0]["candidate_answer"], "{}"]
    assert said[0]["base_answer"] == "I am a chatbot" and said[1]["base_answer"] is None
    assert said[0]["candidate_rouge_l"] == 0.75 and "base_rouge_l" not in said[0]  # the candidate's scores
    page = client.get(f"/models/text-classifier/versions/{version}").text
    assert "What v3 said on its test rows (2 shown)" in page and "0.750" in page and "I am a chatbot" in page
    assert "<script>x" not in page and "&lt;script&gt;x" in page
    assert client.get("/models/text-classifier/versions/1?format=json").json()["answers"] is None  # kept none
    stored = tmp_path / "registry" / "text-classifier" / "versions" / "v0003" / "evidence" / "evaluate_predictions.parquet"
    stored.write_bytes(stored.read_bytes() + b"x")
    said = client.get(f"/models/text-classifier/versions/{version}?format=json").json()["answers"]
    assert said == [{"error": "v3: evidence evaluate_predictions.parquet altered (sha256 differs from the manifest's)"}]


def test_the_model_page_charts_each_versions_metrics_and_a_version_page_is_a_checklist(client, tmp_path):
    store = registry.open_store(str(tmp_path / "registry"), "text-classifier")
    for i, acc in ((3, 0.81), (4, 0.9)):
        cand, decision = _candidate(tmp_path / f"c{i}", bytes([i]))
        decision.write_text(json.dumps({**json.loads(decision.read_text()), "rules": [
            {"rule": "min_accuracy", "passed": True, "measured": acc, "threshold": 0.7, "detail": ""},
            {"rule": "no_regression", "passed": True, "measured": {"candidate_only_correct": 9,
                                                                   "champion_only_correct": 4}, "threshold": 0.05}]}))
        evaluation = tmp_path / f"c{i}.metrics.json"
        evaluation.write_text(json.dumps({"candidate": {"accuracy": acc, "macro_f1": acc - 0.05, "per_class": {}}}))
        registry.promote(store, "text-classifier", cand, decision, evaluation, by="tester", reason=f"run {i}",
                         evidence={"gate_decision.json": decision.read_bytes(),
                                   **({"train_loss.csv": b"step,loss,lr\n1,2.0,0.1\n2,1.0,0.1\n4,0.5,0.1\n"}
                                      if i == 3 else  # before DVCLive; then DVCLive's series (v4)
                                      {"metrics_loss.tsv": b"timestamp\tstep\tloss\n9\t1\t2.0\n9\t2\t1.0\n9\t4\t0.5\n"}),
                                   "evaluate_confusion.csv": b"actual,predicted\na,a\na,b\nb,b\nb,b\n<i>,a\n"})
    page = client.get("/models/text-classifier").text
    points = re.findall(r'data-metric="(\w+)" data-version="(\d+)" data-value="([\d.]+)"', page)
    assert points == [("accuracy", "3", "0.8100"), ("accuracy", "4", "0.9000"),
                      ("macro_f1", "3", "0.7600"), ("macro_f1", "4", "0.8500")]  # v1, v2 measured nothing
    assert mlops_app.chart([])["series"] == []
    one = mlops_app.chart([{"version": 7, "metrics": {"accuracy": 1.0}}])["series"][0]["points"][0]
    assert (one["y"], one["version"]) == (mlops_app.CHART["pad"], 7)  # 1.0 at the top of the plot
    version = client.get("/models/text-classifier/versions/4")
    assert version.status_code == 200
    rows = re.findall(r'<tr class="(pass|fail)">.*?<td>(\w+)</td><td>([^<]*)</td><td>([^<]*)</td>', version.text, re.S)
    assert rows == [("pass", "min_accuracy", "0.9", "0.7"),
                    ("pass", "no_regression", "candidate_only_correct 9, champion_only_correct 4", "0.05")]
    assert re.search(r'<span id="verdict">NOT verified</span>', version.text)  # no data or training behind it
    assert 'data-step="raw"' in version.text and 'data-step="registry"' in version.text
    assert '<polyline points="158.0,36.0 ' in version.text and 'data-points="3"' in version.text  # the loss curve
    cells = re.findall(r'<rect class="cell"[^>]*data-count="(\d+)"', version.text)
    assert cells == ["0", "1", "0", "0", "1", "1", "0", "0", "2"]  # labels <i>, a, b: rows actual, columns predicted
    assert "&lt;i&gt;" in version.text and "<i>" not in version.text  # labels are escaped
    older = client.get("/models/text-classifier/versions/3?format=json").json()["pictures"]
    assert older["loss"]["points"] == client.get("/models/text-classifier/versions/4?format=json").json()[
        "pictures"]["loss"]["points"]  # the same curve, from the CSV a version kept before DVCLive
    stored = tmp_path / "registry" / "text-classifier" / "versions" / "v0004" / "evidence" / "metrics_loss.tsv"
    stored.write_bytes(b"timestamp\tstep\tloss\n9\t1\t0.0\n")
    drawn = client.get("/models/text-classifier/versions/4?format=json").json()["pictures"]
    assert drawn["errors"] == ["v4: evidence metrics_loss.tsv altered (sha256 differs from the manifest's)"]
    assert "loss" not in drawn and drawn["confusion"]["rows"] == [[0, 1, 0], [0, 1, 1], [0, 0, 2]]


def test_a_version_page_in_trouble_says_so_in_words(client, tmp_path):
    missing = client.get("/models/text-classifier/versions/9")
    assert missing.status_code == 404 and "version" in missing.json()["detail"] and "Traceback" not in missing.text
    evidence = tmp_path / "registry" / "text-classifier" / "versions" / "v0002" / "evidence"
    for f in evidence.glob("*") if evidence.exists() else []:
        f.unlink()
    page = client.get("/models/text-classifier/versions/2")
    assert page.status_code == 200 and '<span id="verdict">NOT verified</span>' in page.text
    assert "gate: no gate decision stored with this version" in page.text  # each broken link named
    assert client.get("/models/text-classifier").status_code == 200  # the other pages keep working


def test_the_cost_page_sets_serving_against_api_prices_and_draws_the_routing_frontier(client, tmp_path):
    from pipelines.economics import routing

    page = client.get("/models/text-classifier/cost?format=json").json()
    assert "no throughput measurement yet" in page["served"]["unknown"]
    assert "has no routing tally" in page["routed"]["unknown"] and page["routed"]["serving"]["threshold"] == 0.5
    assert page["runs_without_cost"] == 1 and page["runs_usd"] == 0 and page["so_far"] == []  # no serving_urls
    assert client.get("/models/text-classifier/cost/volume.svg").status_code == 404

    # v3 tuned its routing on five validation answers; its capacity measured; a run with its compute
    folder = tmp_path / "projects" / "text-classifier"
    (folder / "params.yaml").write_text("registry: {root: ../../registry, model_name: text-classifier}\n"
                                        "route: {upstream_accuracy: 0.9, min_accuracy: 0.8}\n")
    counts = {**routing.tally([0.2, 0.4, 0.6, 0.9, 0.95], [False, True, False, True, True]), "text_tokens": 10}
    store = registry.open_store(str(tmp_path / "registry"), "text-classifier")
    registry.promote(store, "text-classifier", *_candidate(tmp_path / "c3", b"3"), None, by="tester",
                     evidence={"evaluate_routing.json": json.dumps({"threshold": 0.61, "counts": counts}).encode()})
    (folder / "reports" / "cost").mkdir(parents=True)
    (folder / "reports" / "cost" / "capacity.json").write_text(json.dumps({
        "version": 3, "best": {"requests_per_s": 100.0, "p99_ms": 50.0, "concurrency": 8},
        "input_tokens_per_request": 160.0, "output_tokens_per_request": 5, "route": "/v1/classify",
        "slo_p99_ms": 500, "measured_at": "2026-11-27T00:00:00Z", "tokens_counted": "estimated",
        "host": {"cpu": "test", "cores": 2, "gpus": []}}))
    record(tmp_path, "text-classifier", "manual__2", compute={"usd": 0.0123, "seconds": 543.0},
           note="promoted text-classifier v3; compute 543 s, $0.0123")

    page = client.get("/models/text-classifier/cost?format=json").json()
    mini = page["served"]["rows"][0]
    own = 0.0816 / (3600 * 100.0) * 1000
    assert mini["api"] == "gpt-4o-mini" and mini["self_hosted_usd_per_1k"] == pytest.approx(own)
    assert mini["ratio"] == pytest.approx((160 * 0.15 + 5 * 0.60) / 1e6 * 1000 / own)
    routed = page["routed"]
    assert routed["champion"] == 3 and routed["chosen"]["threshold"] == 0.61 and routed["chosen"]["accuracy"] == 0.94
    assert routed["serving"]["threshold"] == 0.61 and routed["local"]["usd_per_1k"] == pytest.approx(own, abs=1e-6)
    at = next(p for p in routed["frontier"] if p["threshold"] == 0.61)
    assert at["usd_per_1k"] == pytest.approx(at["api_usd_per_1k"] + routed["local"]["usd_per_1k"])
    assert page["runs_usd"] == pytest.approx(0.0123) and page["runs_without_cost"] == 1
    html = client.get("/models/text-classifier/cost").text
    assert 'id="volume-plot"' in html and 'id="frontier-plot"' in html and "$0.0123" in html
    assert '<b id="chosen">0.61</b>' in html and "gpt-4o-mini" in html
    for picture, says in (("volume", "break-even"), ("frontier", "threshold 0.61")):
        svg = client.get(f"/models/text-classifier/cost/{picture}.svg")
        assert svg.status_code == 200 and svg.headers["content-type"] == "image/svg+xml" and says in svg.text
    assert client.get("/models/text-classifier/cost/pie.svg").status_code == 404
    assert 'id="cost-link"' in client.get("/models/text-classifier").text


def test_the_audit_page_lists_decisions_and_rejections_and_says_what_does_not_verify(client):
    report = client.get("/models/text-classifier/audit?format=json").json()
    assert [(d["action"], d["version"], d["by"], d["reason"]) for d in report["decisions"]] == [
        ("promote", 1, "tester", "run 1"), ("promote", 2, "tester", "run 2")]
    turned_down, = report["rejected"]
    assert turned_down["run_id"] == "manual__1" and turned_down["reasons"] == "min_accuracy: 0.41 < 0.7"
    # the fixture's versions carry no evidence: their chains cannot verify, and the page says so
    assert [v["version"] for v in report["versions"]] == [1, 2] and report["verified"] is False
    assert all(v["broken"] for v in report["versions"])
    page = client.get("/models/text-classifier/audit")
    assert page.status_code == 200 and 'class="banner broken"' in page.text and "min_accuracy: 0.41 &lt; 0.7" in page.text
    later = client.get("/models/text-classifier/audit?since=2999-01-01&format=json").json()
    assert later["decisions"] == later["rejected"] == later["versions"] == [] and later["verified"] is True
    bad = client.get("/models/text-classifier/audit?since=yesterday")
    assert bad.status_code == 422 and "since: 'yesterday' is not a date" in bad.text
    assert client.get("/models/no-such-model/audit").status_code == 404
    assert 'id="audit-link"' in client.get("/models/text-classifier").text


def test_a_broken_model_or_record_is_named_and_the_other_pages_keep_working(client, tmp_path):
    """A model folder whose params do not parse, and a run record someone damaged: each page says which and
    why (409, one line naming the file), never a bare 500; the other models' pages are unaffected."""
    (tmp_path / "projects" / "broken").mkdir()
    (tmp_path / "projects" / "broken" / "params.yaml").write_text("registry: {root: [not, a, path]\n")
    ref = run_ref_name("text-classifier", "manual__damaged")  # someone edits a record by hand
    with tempfile.TemporaryDirectory() as tmp:
        gitops.checkout(Path(tmp), str(tmp_path), "HEAD")
        (Path(tmp) / records.RECORD).parent.mkdir(parents=True)
        (Path(tmp) / records.RECORD).write_text(json.dumps({"run_id": "manual__damaged", "gate": ["not", "an"],
                                                           "snapshot": "x"}))
        gitops.push(Path(tmp), str(tmp_path), gitops.commit_all(Path(tmp), "damaged", [records.RECORD]), ref)
    rows = {r["model"]: r for r in client.get("/?format=json").json()}
    assert "params.yaml" in rows["broken"]["error"] and rows["text-classifier"]["versions"] == [1, 2]
    index = client.get("/")
    assert index.status_code == 200 and "damaged:" in index.text and "champion=v2" in index.text
    broken = client.get("/models/broken")
    assert broken.status_code == 409 and "params.yaml" in broken.text and 'id="problem"' in broken.text
    assert client.get("/models/broken?format=json").json()["error"].count("\n") == 0
    good = client.get("/models/text-classifier?format=json")
    assert good.status_code == 200
    damaged = next(d for d in good.json()["gate_decisions"] if d["run_id"] == "manual__damaged")
    assert "run record malformed (snapshot, gate not an object)" in damaged["note"]
    assert client.get("/models/text-classifier/runs/manual__damaged").status_code == 200
    assert client.get("/models/broken/cost").status_code == 409


def test_a_damaged_capacity_record_is_said_on_the_cost_page(client, tmp_path):
    kept = tmp_path / "projects" / "text-classifier" / "reports" / "cost" / "capacity.json"
    kept.parent.mkdir(parents=True)
    kept.write_text('{"version": 2, "best": {"requests_per_s": "fast", "p99_ms": 3, "concurrency": 1}}')
    page = client.get("/models/text-classifier/cost?format=json")
    assert page.status_code == 200, page.text
    assert "damaged capacity record (best.requests_per_s:" in page.json()["served"]["unknown"]
    assert client.get("/models/text-classifier/cost").status_code == 200
