"""A real `airflow standalone` (api-server, scheduler, dag-processor, triggerer) on a throw-away copy
of the project: lifecycle__text-classifier triggered through the REST API v2 with params as the UI form
sends them, the registry and the lineage checked, the run's note written by the plugin's listener, a
new drop starting the lifecycle through the `raw_drops__text-classifier` Asset (the arrival state in an
Airflow Variable), the plugin page protected and shown in a real headless Chromium (screenshots kept as
test artefacts), and the human approval step answered twice: Approve clicked in Airflow's UI, Reject
sent through the REST API."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from pipelines.devtools import airflow_local
from pipelines.orchestration import records, steps
from tests.lifecycle_support import airflow_env, drop, make_project, pipelines
from tests.serving_support import free_port, start_loopback

pytestmark = pytest.mark.integration
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DAG = "lifecycle__text-classifier"


def _missed_weekly() -> str:
    """A weekly cron whose last slot was 8 hours ago: unpausing the DAG makes Airflow create its run at
    once (within a tenth of the period), 2 hours past lifecycle.missed_slot_grace_h (6)."""
    from datetime import datetime, timedelta, timezone

    slot = datetime.now(timezone.utc) - timedelta(hours=8)
    return f"{slot.minute} {slot.hour} * * {(slot.weekday() + 1) % 7}"


@pytest.fixture(scope="module")
def airflow(tmp_path_factory):
    # run_deadline_h 0.005 (18 s): every run here takes longer, so each one's deadline alert fires
    repo = make_project(tmp_path_factory.mktemp("standalone"), train={"epochs": 2, "max_length": 32,
                                                                      "checkpoint_every": 20},
                        lifecycle={"run_deadline_h": 0.005, "approvers": ["admin"], "schedule": _missed_weekly()})
    alerts, hook = [], FastAPI()  # the team's chat webhook, on loopback

    @hook.post("/alerts")
    async def alert(body: dict):
        alerts.append(body)
        return {"ok": True}

    hook_server, hook_url = start_loopback(hook)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = airflow_env(repo, AIRFLOW__API__HOST="127.0.0.1", AIRFLOW__API__PORT=str(port),
                      PIPELINES_ALERT_WEBHOOK=f"{hook_url}/alerts",
                      AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"{url}/execution/",
                      AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="admin:admin,mallory:admin",  # mallory: no approver
                      AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="True",
                      AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL="5",
                      AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="5")
    airflow_local.setup(repo)
    _, seen = steps.new_drops(repo / "projects" / "text-classifier" / "data" / "raw", None)  # the first look
    airflow_local.airflow(repo, "variables", "set", "pipelines_arrival__text-classifier", json.dumps(seen))
    log = open(repo / ".airflow" / "standalone.log", "w")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "airflow"), "standalone"], cwd=repo, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        token = _wait_token(url, repo, proc)
        mallory = _wait_token(url, repo, proc, "mallory")
        yield {"url": url, "repo": repo, "token": token, "headers": {"Authorization": f"Bearer {token}"},
               "mallory": {"Authorization": f"Bearer {mallory}"}, "alerts": alerts}
    finally:
        hook_server.should_exit = True
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def _wait_token(url: str, repo: Path, proc, user: str = "admin") -> str:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        assert proc.poll() is None, (repo / ".airflow" / "standalone.log").read_text()[-3000:]
        passwords = repo / ".airflow" / "passwords.json"
        try:
            if passwords.exists() and httpx.get(f"{url}/api/v2/monitor/health", timeout=5).status_code == 200:
                password = json.loads(passwords.read_text())[user]
                r = httpx.post(f"{url}/auth/token", json={"username": user, "password": password}, timeout=10)
                if r.status_code in (200, 201):
                    return r.json()["access_token"]
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        time.sleep(2)
    raise AssertionError("airflow standalone did not come up:\n" + (repo / ".airflow" / "standalone.log").read_text()[-3000:])


def _api(af, method: str, path: str, headers: dict | None = None, **kw) -> httpx.Response:
    return httpx.request(method, f"{af['url']}/api/v2{path}", headers=headers or af["headers"], timeout=30, **kw)


def _wait_for(predicate, seconds: float, what: str, every: float = 3.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def _wait_run(af, dag_id: str, run_id: str, seconds: float = 900) -> dict:
    def finished():
        run = _api(af, "GET", f"/dags/{dag_id}/dagRuns/{run_id}").json()
        return run if run.get("state") in ("success", "failed") else None
    run = _wait_for(finished, seconds, f"{dag_id} {run_id}", every=5)
    if run["state"] != "success":
        tis = _api(af, "GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances").json()["task_instances"]
        raise AssertionError(f"{dag_id} {run_id} {run['state']}: " + str([(t["task_id"], t["state"]) for t in tis]))
    return run


def test_trigger_from_the_rest_api_like_the_ui_form(airflow):
    af = airflow
    _wait_for(lambda: _api(af, "GET", f"/dags/{DAG}").status_code == 200, 180, "the DAG to be parsed")
    form = {"dataset": "default", "base_model": "minilm", "epochs": 2, "learning_rate": 0.003, "lora_rank": 8,
            "min_accuracy": None, "min_macro_f1": None, "require_approval": False}
    refused = _api(af, "POST", f"/dags/{DAG}/dagRuns", json={"logical_date": None, "conf": {**form, "epochs": 99}})
    assert refused.status_code == 400 and "epochs" in refused.text
    created = _api(af, "POST", f"/dags/{DAG}/dagRuns", json={"logical_date": None, "conf": form})
    assert created.status_code == 200, created.text
    run_id = created.json()["dag_run_id"]
    assert _api(af, "PATCH", f"/dags/{DAG}", json={"is_paused": False}).status_code == 200
    _wait_run(af, DAG, run_id)

    record = records.read(str(af["repo"]), "text-classifier", run_id)
    assert record["promotion"]["version"] == 1 and record["run"]["triggered_by"] == "admin"
    chain = json.loads(pipelines(af["repo"], "--model", "text-classifier", "lineage", "--json").stdout)
    assert chain["verified"] and chain["links"][-1]["run_id"] == run_id and chain["links"][-1]["triggered_by"] == "admin"
    note = _wait_for(lambda: _api(af, "GET", f"/dags/{DAG}/dagRuns/{run_id}").json().get("note"), 60,
                     "the listener's note")
    assert note == record["note"] and note.startswith("promoted text-classifier v1")
    af["run_id"] = run_id
    # Unpausing made Airflow create a run for the weekly slot missed 8 hours ago, while the DAG was off: it
    # trains nothing (lifecycle.missed_slot: skip), so starting a scheduler never retrains every model at once.
    missed = _wait_for(lambda: [r for r in _api(af, "GET", f"/dags/{DAG}/dagRuns").json()["dag_runs"]
                                if r["run_type"] == "scheduled"], 120, "the missed slot's run")
    _wait_run(af, DAG, missed[0]["dag_run_id"], seconds=180)
    assert _ti_state(af, missed[0]["dag_run_id"], "snapshot") == "skipped"
    assert _ti_state(af, missed[0]["dag_run_id"], "train") == "skipped"


def test_a_run_past_its_deadline_is_reported_to_the_webhook(airflow):
    """Airflow's run-level DeadlineAlert: the scheduler sees the first run miss its 18 s deadline and the
    triggerer runs the alert callback, which POSTs to the webhook named by lifecycle.alert_webhook_env."""
    af = airflow
    assert af.get("run_id"), "needs the first run"
    said = _wait_for(lambda: [a for a in af["alerts"] if a.get("run_id") == af["run_id"]], 180,
                     "the deadline alert of the first run")
    assert said[0]["dag_id"] == DAG and said[0]["model"] == "text-classifier"
    assert said[0]["text"].startswith(f"{DAG} run {af['run_id']} is not done 0.005 h after it was queued")


def test_new_drop_starts_the_lifecycle_through_the_asset(airflow):
    af = airflow
    assert af.get("run_id"), "needs the first run"
    drop(af["repo"], "text-classifier", rows=300, seed=3)
    assert _api(af, "PATCH", "/dags/data_arrival", json={"is_paused": False}).status_code == 200
    sensed = _api(af, "POST", "/dags/data_arrival/dagRuns", json={"logical_date": None}).json()["dag_run_id"]
    _wait_run(af, "data_arrival", sensed, seconds=180)

    def asset_run():
        runs = _api(af, "GET", f"/dags/{DAG}/dagRuns").json()["dag_runs"]
        return next((r for r in runs if r["run_type"] == "asset_triggered"), None)
    run = _wait_for(asset_run, 120, f"an asset-triggered {DAG} run")
    _wait_run(af, DAG, run["dag_run_id"])
    record = records.read(str(af["repo"]), "text-classifier", run["dag_run_id"])
    assert record["run"]["triggered_by"] == "asset event (new data drop)"
    assert len(record["snapshot"]["files"]) == 2 and record["gate"]["champion_version"] == 1


def test_plugin_pages_need_an_airflow_login(airflow):
    af = airflow
    page = f"{af['url']}/mlops/models/text-classifier"
    assert httpx.get(page, timeout=10).status_code == 401
    assert httpx.get(page, headers={"Authorization": "Bearer not-a-jwt"}, timeout=10).status_code == 403
    assert httpx.get(page, cookies={"_token": "forged"}, timeout=10).status_code == 403
    data = httpx.get(f"{page}?format=json", headers=af["headers"], timeout=30).json()
    assert data["aliases"]["champion"] in (1, 2) and [v["version"] for v in data["versions"]][-1] == 1
    lineage = httpx.get(f"{page}/versions/1?format=json", headers=af["headers"], timeout=60).json()
    assert lineage["verified"] is True
    run = httpx.get(f"{page}/runs/{af['run_id']}?format=json", headers=af["headers"], timeout=10).json()
    assert run["promotion"]["version"] == 1


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (./dev.sh test installs it)")
def test_models_page_in_a_real_browser(airflow, tmp_path):
    from PIL import Image

    af = airflow
    shot = tmp_path / "mlops-models.png"
    pipelines(af["repo"], "--model", "text-classifier", "cost", "--measure", "--seconds", "1")  # for the cost page
    with _browser(af) as page:
        page.goto(f"{af['url']}/plugin/mlops", wait_until="networkidle")  # the UI's nav entry: an iframe
        frame = _frame(page, "/mlops/")
        frame.wait_for_selector("#models")
        assert "text-classifier" in frame.inner_text("#models") and "champion=v" in frame.inner_text("#models")
        page.screenshot(path=str(shot), full_page=True)
        page.goto(f"{af['url']}/mlops/models/text-classifier")
        points = page.locator("#chart circle.point[data-metric=accuracy]")  # metrics over versions
        assert points.count() >= 1 and 0 < float(points.first.get_attribute("data-value")) <= 1
        assert "promoted v1" in page.inner_text("#decisions")  # each run's outcome
        page.screenshot(path=str(tmp_path / "mlops-model.png"), full_page=True)
        page.click("#cost-link")  # what it costs: served against API prices, routed, trained
        page.wait_for_selector("#volume-plot", timeout=120_000)  # drawn by the server: slow beside a training
        for plot in ("#volume-plot", "#frontier-plot"):  # both pictures drew (an <img> that failed has no width)
            assert page.evaluate(f"document.querySelector('{plot}').naturalWidth") > 0, plot
        assert "gpt-4o-mini" in page.inner_text("#comparison") and "x" in page.inner_text("#comparison")
        assert float(page.inner_text("#serving")) == float(page.inner_text("#chosen"))  # the tuned one serves
        assert "run(s), $" in page.inner_text("#runs-total") and page.locator("#runs tr").count() >= 2
        page.screenshot(path=str(tmp_path / "mlops-cost.png"), full_page=True)
        page.goto(f"{af['url']}/mlops/models/text-classifier")
        page.click("#audit-link")  # the report an auditor files: decisions, rejections, lineage re-verified
        page.wait_for_selector("#verdict")
        assert "re-verifies from the served weights back to the raw rows" in page.inner_text("#verdict")
        assert "promoted v1" in page.inner_text("#decisions") and page.locator("section.version").count() >= 1
        assert page.locator("section.version[data-verified=true]").count() == page.locator("section.version").count()
        page.screenshot(path=str(tmp_path / "mlops-audit.png"), full_page=True)
        page.goto(f"{af['url']}/mlops/models/text-classifier/versions/1")
        assert page.inner_text("#verdict") == "verified"
        assert page.locator("#checklist tr.pass").count() >= 3 and page.locator("#checklist tr.fail").count() == 0
        assert page.locator("#chain .step.ok").count() == page.locator("#chain .step").count() >= 8
        assert page.locator("#chain .step").first.get_attribute("data-step") == "raw"  # drawn as data flowed
        assert int(page.locator("#loss polyline").get_attribute("data-points")) >= 2  # the loss curve
        cells = page.locator("#confusion rect.cell").count()  # the confusion matrix: a square of labels
        assert cells >= 4 and round(cells ** 0.5) ** 2 == cells
        page.screenshot(path=str(tmp_path / "mlops-version.png"), full_page=True)
    for name in ("mlops-models.png", "mlops-model.png", "mlops-cost.png", "mlops-audit.png", "mlops-version.png"):
        image = Image.open(tmp_path / name)
        assert image.size[0] == 1280 and len(set(image.convert("L").getdata())) > 20, name  # rendered, not blank


def _awaiting(af, run_id: str) -> bool:
    """The run's `approve` task waits for a person now (its current try; or the run ended without asking:
    then fail loudly)."""
    run = _api(af, "GET", f"/dags/{DAG}/dagRuns/{run_id}").json()
    if run.get("state") in ("success", "failed"):
        raise AssertionError(f"{run_id} ended ({run['state']}) without asking for approval: {run.get('note')}")
    if _ti_state(af, run_id, "approve") != "awaiting_input":
        return False
    details = _api(af, "GET", f"/dags/{DAG}/dagRuns/{run_id}/hitlDetails").json().get("hitl_details") or []
    return any(not d["response_received"] and d["task_instance"]["task_id"] == "approve" for d in details)


def test_a_person_approves_in_the_airflow_ui_and_rejects_through_the_api(airflow, tmp_path):
    """require_approval: two runs wait at `approve` and the plugin's pages say so. The approval cannot be
    skipped: on the second run mallory (an Airflow admin, not in lifecycle.approvers) is refused by the
    approval endpoint, sets the step to success through the API and forges its XCom, then the approver
    sets it to success (a state change, not an answer): each time `promote` fails and nothing is promoted;
    cleared, the step asks again. Then a person approves the first run in Airflow's own UI (a real
    browser; through the API where Chromium is not installed) and rejects the second through the REST
    API. The approver's name lands in the registry ledger, the run records and the lineage branch; the
    rejection leaves the champion serving."""
    af = airflow
    _wait_for(lambda: _api(af, "GET", f"/dags/{DAG}").status_code == 200, 180, "the DAG to be parsed")
    assert _api(af, "PATCH", f"/dags/{DAG}", json={"is_paused": False}).status_code == 200
    form = {"dataset": "default", "base_model": "minilm", "epochs": 2, "lora_rank": 8, "min_accuracy": None,
            "min_macro_f1": None, "require_approval": True}
    runs = {}  # different learning rates: new candidates, not the champion again
    for answer, rate in (("Approve", 0.004), ("Reject", 0.0035)):
        created = _api(af, "POST", f"/dags/{DAG}/dagRuns",
                       json={"logical_date": None, "conf": {**form, "learning_rate": rate}})
        assert created.status_code == 200, created.text
        runs[answer] = created.json()["dag_run_id"]
    for run_id in runs.values():
        _wait_for(lambda run_id=run_id: _awaiting(af, run_id), 900, f"{run_id} to ask for approval", every=5)
    page = f"{af['url']}/mlops/models/text-classifier"
    before = httpx.get(f"{page}?format=json", headers=af["headers"], timeout=30).json()
    waiting = {d["run_id"]: d for d in before["gate_decisions"] if d["outcome"] == "awaiting approval"}
    assert set(runs.values()) <= set(waiting)
    listed = httpx.get(f"{af['url']}/mlops/?format=json", headers=af["headers"], timeout=30).json()
    assert set(runs.values()) <= set(next(m for m in listed if m["model"] == "text-classifier")["awaiting_approval"])

    _skipping_the_approval_is_refused(af, runs["Reject"])
    _wait_for(lambda: _awaiting(af, runs["Reject"]), 300, "the step to ask again after the clear", every=3)
    time.sleep(ASKED_SETTLES)

    if Path(CHROMIUM).exists():
        with _browser(af) as ui:
            ui.goto(page, wait_until="networkidle")  # the model page: both runs wait, each with its link
            assert ui.locator("#decisions tr.awaiting").count() >= 2
            ui.screenshot(path=str(tmp_path / "mlops-awaiting.png"), full_page=True)
            row = ui.locator("#decisions tr.awaiting", has_text=runs["Approve"])
            row.get_by_role("link", name="answer in Airflow").click()  # to Airflow's Required Actions tab
            ui.wait_for_url("**/tasks/approve/required_actions", timeout=30_000)
            approve = ui.get_by_role("button", name="Approve", exact=True)
            approve.wait_for(timeout=60_000)
            assert "passed the gate" in ui.inner_text("body")  # the request says what it is about
            ui.screenshot(path=str(tmp_path / "airflow-approve.png"), full_page=True)
            approve.click()
    else:  # no browser here: the same answer, through the API
        said = f"/dags/{DAG}/dagRuns/{runs['Approve']}/taskInstances/approve/-1/hitlDetails"
        assert _api(af, "PATCH", said, json={"chosen_options": ["Approve"]}).status_code == 200
    _wait_for(lambda: not _awaiting(af, runs["Approve"]), 60, "the approval to be recorded", every=2)

    path = f"/dags/{DAG}/dagRuns/{runs['Reject']}/taskInstances/approve/-1/hitlDetails"
    rejected = _api(af, "PATCH", path, json={"chosen_options": ["Reject"]})
    assert rejected.status_code == 200 and rejected.json()["responded_by"]["name"] == "admin", rejected.text
    assert _api(af, "PATCH", path, json={"chosen_options": ["Approve"]}).status_code == 409  # an answer stands
    for run_id in runs.values():
        _wait_run(af, DAG, run_id)

    def final(run_id):  # the record the teardown marked finished
        got = records.read(str(af["repo"]), "text-classifier", run_id)
        return got if got and got.get("finished") else None
    yes, no = (_wait_for(lambda r=runs[a]: final(r), 60, f"{a}: the finished record") for a in ("Approve", "Reject"))
    assert yes["promotion"]["approved_by"] == "admin" and yes["promotion"]["changed"], yes
    assert yes.get("review", {}).get("decision") == "approved" and "approved by admin" in yes["note"], yes
    assert no.get("review", {}).get("decision") == "rejected" and no["review"]["by"] == "admin", no
    assert "promotion" not in no
    assert no["note"].startswith("admin rejected the promotion")
    after = httpx.get(f"{page}?format=json", headers=af["headers"], timeout=30).json()
    version = yes["promotion"]["version"]
    assert after["aliases"]["champion"] == version  # the rejected candidate never moved it
    promoted = [e for e in after["ledger"] if e.get("version") == version and e.get("approved_by")]
    assert promoted and promoted[0]["approved_by"] == "admin"
    assert "approved by admin" in httpx.get(page, headers=af["headers"], timeout=30).text  # the ledger's row
    assert len([e for e in after["ledger"] if e["seq"] > max(e["seq"] for e in before["ledger"])]) >= 1
    assert not any(d["outcome"] == "awaiting approval" for d in after["gate_decisions"] if d["run_id"] in runs.values())
    chain = json.loads(pipelines(af["repo"], "--model", "text-classifier", "lineage", "--json").stdout)
    assert chain["verified"] and chain["links"][-1]["run_id"] == runs["Approve"]
    assert chain["links"][-1]["approved_by"] == "admin"
    for record, decision in ((yes, "approved"), (no, "rejected")):  # both answers are on the lineage branch
        kept = subprocess.run(["git", "-C", str(af["repo"]), "show", f"{record['lineage_commit']}:lineage/run.json"],
                              capture_output=True, text=True, check=True).stdout
        assert json.loads(kept)["review"] == {**record["review"], "decision": decision}


# Airflow 3.3 races an answer given within about a second of the step pausing for it: the scheduler
# then reads the executor's report of the pause as a state changed behind its back and fails the step.
# People take longer than that; the test waits as long.
ASKED_SETTLES = 5.0


def _ti_state(af, run_id: str, task_id: str) -> str | None:
    return _api(af, "GET", f"/dags/{DAG}/dagRuns/{run_id}/taskInstances/{task_id}").json().get("state")


def _skipping_the_approval_is_refused(af, run_id: str) -> None:
    """A state change through the API by a non-approver, then by an approver (no answer either way): each
    time `promote` fails, saying none is recorded, and the ledger is unchanged; then the step is cleared."""
    ledger = lambda: (af["repo"] / "registry" / "text-classifier" / "ledger.jsonl").read_bytes()  # noqa: E731
    hitl = f"/dags/{DAG}/dagRuns/{run_id}/taskInstances/approve/-1/hitlDetails"
    ti = f"/dags/{DAG}/dagRuns/{run_id}/taskInstances/approve"
    for who in ("mallory", "admin"):
        _wait_for(lambda: _awaiting(af, run_id), 300, f"{run_id} to ask for approval", every=3)
        time.sleep(ASKED_SETTLES)
        before = ledger()
        if who == "mallory":
            refused = _api(af, "PATCH", hitl, headers=af["mallory"], json={"chosen_options": ["Approve"]})
            assert refused.status_code == 403, refused.text  # the approval endpoint knows who may answer
            forged = _api(af, "POST", f"/dags/{DAG}/dagRuns/{run_id}/taskInstances/approve/xcomEntries",
                          headers=af["mallory"], json={"key": "answer", "value": {
                              "chosen_options": ["Approve"], "responded_by_user": {"id": "admin", "name": "admin"}}})
            assert forged.status_code in (200, 201, 403, 404, 405), forged.text  # written or not: never read
        marked = _api(af, "PATCH", ti, headers=af["mallory"] if who == "mallory" else af["headers"],
                      json={"new_state": "success"})
        assert marked.status_code == 200, marked.text
        _wait_for(lambda: _ti_state(af, run_id, "promote") == "failed", 300, f"promote to refuse ({who})", every=3)
        _wait_for(lambda: _api(af, "GET", f"/dags/{DAG}/dagRuns/{run_id}").json().get("state") == "failed", 120,
                  "the run to end")
        assert ledger() == before  # nothing promoted
        said = records.read(str(af["repo"]), "text-classifier", run_id)
        assert said["failed"]["task"] == "promote" and "none is recorded" in said["failed"]["error"], said
        cleared = _api(af, "POST", f"/dags/{DAG}/clearTaskInstances", json={
            "dry_run": False, "dag_run_id": run_id, "task_ids": ["approve"], "include_downstream": True,
            "only_failed": False})
        assert cleared.status_code == 200, cleared.text


@contextlib.contextmanager
def _browser(af):
    """A page of a headless Chromium at 1280 px, logged in to Airflow (the UI's `_token` cookie)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            context.add_cookies([{"name": "_token", "value": af["token"], "url": af["url"]}])
            yield context.new_page()
        finally:
            browser.close()


def _frame(page, path: str, seconds: float = 30):
    """The iframe the Airflow UI opened on the plugin's page."""
    from urllib.parse import urlparse

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        frames = [f for f in page.frames if f is not page.main_frame and urlparse(f.url).path == path]
        if frames:
            return frames[0]
        page.wait_for_timeout(500)
    raise AssertionError(f"no frame at {path} in {[f.url for f in page.frames]}")
