"""`pipelines cost` against a real server: a trained classifier served on loopback and measured, its
cost per 1k requests set against API prices; and what it says when there is nothing to say yet."""
from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pandas as pd
import pytest
import yaml

from pipelines.registry import store as registry
from tests.serving_support import INTENTS, build_registry

pytestmark = pytest.mark.integration


def cost(folder, *args, check=True) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "pipelines", "cost", *args], cwd=folder, capture_output=True,
                         text=True, timeout=600)
    assert not check or out.returncode == 0, out.stderr
    return out


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("cost")
    built = build_registry(root, "classification", versions=2)  # v1 is champion
    folder = root / "model"
    (folder / "data" / "raw").mkdir(parents=True)
    pd.DataFrame([{"text": f"{text}, please help ({i})", "label": label} for label, text in INTENTS.items()
                  for i in range(20)]).to_csv(folder / "data" / "raw" / "drop.csv", index=False)
    (folder / "params.yaml").write_text(yaml.safe_dump({
        "registry": {"root": str(root / "registry"), "model_name": "text-classifier"},
        "cost": {"latency_slo_p99_ms": 5000, "monthly_requests": 2_000_000}}))
    return folder, built


def test_nothing_measured_yet_is_unknown_not_a_number(model):
    folder, _ = model
    report, = json.loads(cost(folder, "--json").stdout)
    assert report["champion"] == 1 and "no throughput measurement yet" in report["unknown"] and "rows" not in report
    assert "unknown: no throughput measurement yet" in cost(folder).stdout


def test_measured_on_loopback_and_set_against_api_prices(model):
    folder, built = model
    report, = json.loads(cost(folder, "--measure", "--seconds", "1", "--json").stdout)
    kept = json.loads((folder / "reports" / "cost" / "capacity.json").read_text())
    assert kept["version"] == 1 and kept["host"]["cores"] >= 1 and kept["route"] == "/v1/classify"
    assert [lv["concurrency"] for lv in kept["levels"]][:2] == [1, 2]  # rising load until p99 misses
    best = kept["best"]
    assert best["requests_per_s"] > 0 and best["errors"] == 0 and best["p99_ms"] <= 5000
    assert best == max((lv for lv in kept["levels"] if lv["errors"] == 0 and lv["p99_ms"] <= 5000),
                       key=lambda lv: lv["requests_per_s"])
    assert [r["api"] for r in report["rows"]] == ["gpt-4o-mini", "gpt-4o"]
    own = 0.0816 / (3600 * best["requests_per_s"]) * 1000  # cpu-2vcpu's default price per hour
    for row in report["rows"]:
        assert row["self_hosted_usd_per_1k"] == pytest.approx(own)
        assert row["ratio"] == pytest.approx(row["api_usd_per_1k"] / own)
        assert row["at_volume"]["requests"] == 2_000_000 and row["at_volume"]["machines"] >= 1
    mini, big = report["rows"]
    assert big["api_usd_per_1k"] > mini["api_usd_per_1k"] > 0  # the text's tokens plus the prompt, priced
    svg = (folder / "reports" / "cost" / "volume.svg").read_text()  # both bills against volume, drawn
    assert "<svg" in svg and "requests a month" in svg and "gpt-4o-mini" in svg and "break-even" in svg
    table = cost(folder).stdout  # read back from the record, no new measurement
    assert "gpt-4o-mini" in table and "break-even" in table and f"{best['requests_per_s']:g} requests/s" in table

    # A new champion makes the measurement stale: said, not reused.
    registry.promote(built["store"], built["model"], *built["candidates"][1], None, reason="second")
    stale, = json.loads(cost(folder, "--json").stdout)
    assert stale["champion"] == 2 and "the measurement is of v1, the champion is v2" in stale["unknown"]


@pytest.mark.parametrize("args, says", [
    (["--hardware", "tpu-v9"], "unknown hardware kind 'tpu-v9'"),
    (["--seconds", "0"], "--seconds: must be a finite number > 0"),
    (["--measure", "--seconds", "inf"], "--seconds: must be a finite number > 0, not inf"),  # never ends otherwise
    (["--measure", "--seconds", "nan"], "--seconds: must be a finite number > 0, not nan"),
    (["--measure", "--seconds", "86400"], "--seconds: at most 600 seconds"),
    (["--volume", "-3"], "--volume"),
])
def test_bad_input_is_one_line(model, args, says):
    out = cost(model[0], *args, check=False)
    assert out.returncode == 2 and says in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("damage, says", [
    ("{not json", "capacity.json: unreadable"),
    ("[1, 2]", "damaged capacity record (the record: Input should be a valid dictionary"),
    ('{"version": 1, "best": {"requests_per_s": "fast", "p99_ms": 3, "concurrency": 1}}',
     "damaged capacity record (best.requests_per_s:"),
    ('{"version": 1, "best": {"requests_per_s": 5, "p99_ms": 3, "concurrency": 1}}', "tokens per request missing"),
    ('{"version": "one"}', "damaged capacity record (version:"),
])
def test_a_damaged_measurement_is_named(model, damage, says):
    folder, _ = model
    kept = folder / "reports" / "cost" / "capacity.json"
    kept.parent.mkdir(parents=True, exist_ok=True)
    saved = kept.read_bytes() if kept.exists() else None
    kept.write_text(damage)
    try:
        out = cost(folder, check=False)
        assert out.returncode == 2 and says in out.stderr and "Traceback" not in out.stderr, out.stderr
        assert out.stderr.count("\n") == 1
    finally:
        kept.unlink()
        if saved is not None:
            kept.write_bytes(saved)


def test_route_tune_says_why_a_champion_without_a_routing_tally_has_no_frontier(model):
    folder, _ = model
    out = subprocess.run([sys.executable, "-m", "pipelines", "route", "tune", "--json"], cwd=folder,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    doc, = json.loads(out.stdout)
    assert "has no routing tally: promoted before evaluate tuned routing" in doc["unknown"]
    assert doc["serving"] == {"threshold": 0.5, "source": "the default: the version's evaluation tuned none"}
    assert not (folder / "reports" / "route" / "tune.json").exists()


@pytest.mark.parametrize("args, says", [
    (["--upstream-accuracy", "1.5"], "--upstream-accuracy: must be within [0, 1], not 1.5"),
    (["--min-accuracy", "high"], "--min-accuracy: 'high' is not a number"),
    (["--model", "../etc"], "invalid model name '../etc'"),
    (["--model", "it-helpdesk"], "--model it-helpdesk: these params are text-classifier's"),
])
def test_route_tune_bad_input_is_one_line(model, args, says):
    out = subprocess.run([sys.executable, "-m", "pipelines", "route", "tune", *args], cwd=model[0],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and says in out.stderr and "Traceback" not in out.stderr


def test_what_a_server_has_served_per_route_is_read_from_its_metrics(model, monkeypatch):
    from pipelines.core.config import parse_params
    from pipelines.serving.app import create_app
    from pipelines.serving.route_tune import served_so_far
    from tests.serving_support import start_loopback

    folder, _ = model
    monkeypatch.setenv("PIPELINES_API_KEYS", "k1")
    params = parse_params({"registry": {"root": str(folder.parent / "registry"), "model_name": "text-classifier"}})
    server, url = start_loopback(create_app(params, poll=False))
    try:
        r = httpx.post(f"{url}/v1/classify", json={"texts": ["my card is lost", "hello"]},
                       headers={"Authorization": "Bearer k1"}, timeout=60)
        assert r.status_code == 200, r.text
        seen, gone = served_so_far([url, "http://127.0.0.1:9"], "text-classifier", "k1")
        refused, = served_so_far([url], "text-classifier", "wrong")
        assert seen["routes"]["local"]["requests"] == 2 and seen["routes"]["local"]["tokens"] > 0
        assert refused == {"url": url, "error": "HTTP 401"} and gone["error"].startswith("unreachable")
        assert served_so_far([url], "another-model", "k1")[0]["routes"] == {}
    finally:
        server.should_exit = True


def test_route_tune_measures_the_upstreams_accuracy_on_a_sample_of_raw_rows(model, tmp_path):
    import shutil

    from pipelines.economics import routing
    from pipelines.training.modeling import candidate_hash
    from tests.serving_support import FakeUpstream

    folder, built = model
    cand = tmp_path / "cand-routed"  # a version whose evaluation tallied its routing: five answers
    shutil.copytree(built["candidates"][0][0], cand)
    (cand / "NOTE.txt").write_text("routed")  # another candidate, its own hash
    decision = tmp_path / "routed.decision.json"
    decision.write_text(json.dumps({"candidate_hash": candidate_hash(cand), "passed": True, "rules": []}))
    counts = {**routing.tally([0.2, 0.4, 0.6, 0.9, 0.95], [False, True, False, True, True]), "text_tokens": 10}
    registry.promote(built["store"], built["model"], cand, decision, None,
                     evidence={"evaluate_routing.json": json.dumps({"threshold": 0.61, "counts": counts}).encode()})

    def knows_two_intents(body):  # right about card_arrival and change_pin, wrong about refund_request
        label = next(lab for lab, text in INTENTS.items() if text in body["messages"][1]["content"])
        return "card_arrival" if label == "refund_request" else label

    up = FakeUpstream(knows_two_intents)
    base = yaml.safe_load((folder / "params.yaml").read_text())
    try:
        (folder / "params-up.yaml").write_text(yaml.safe_dump({**base, "serve": {"fallback": {"url": up.url}},
                                                                "route": {"min_accuracy": 0.9}}))
        out = subprocess.run([sys.executable, "-m", "pipelines", "--params", "params-up.yaml", "route", "tune",
                              "--sample", "30", "--json"], cwd=folder, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        doc, = json.loads(out.stdout)
        asked = [c["messages"][1]["content"] for c in up.calls]
        right = sum(INTENTS["refund_request"] not in text for text in asked)
        assert len(asked) == 30 and doc["upstream_sample"] == {
            "asked": 30, "right": right, "failed": 0, "accuracy": round(right / 30, 4),
            "source": f"measured: {right} of 30 raw rows right (gpt-4o-mini at {up.url})"}
        assert doc["upstream"]["accuracy"] == round(right / 30, 4)
        assert doc["upstream"]["accuracy_source"].startswith("measured: ")
        assert doc["chosen"]["accuracy"] == next(p["accuracy"] for p in doc["frontier"]
                                                 if p["threshold"] == doc["chosen"]["threshold"])
        # rows with PII are never sent; with no upstream there is nothing to ask
        pii_raw = folder / "data" / "raw-pii"
        pii_raw.mkdir(exist_ok=True)
        pd.DataFrame([{"text": "mail me at ann@example.com", "label": "change_pin"}]).to_csv(pii_raw / "d.csv",
                                                                                              index=False)
        for extra, says in (({"data": {"raw": "data/raw-pii"}, "serve": {"fallback": {"url": up.url}}},
                             "has no labelled rows free of PII to send"),
                            ({}, "--sample: serve.fallback.url is not set")):
            (folder / "params-up.yaml").write_text(yaml.safe_dump({**base, **extra}))
            out = subprocess.run([sys.executable, "-m", "pipelines", "--params", "params-up.yaml", "route", "tune",
                                  "--sample", "5"], cwd=folder, capture_output=True, text=True, timeout=300)
            assert out.returncode == 2 and says in out.stderr and "Traceback" not in out.stderr
        assert len(up.calls) == 30
    finally:
        up.stop()
        (folder / "params-up.yaml").unlink(missing_ok=True)
