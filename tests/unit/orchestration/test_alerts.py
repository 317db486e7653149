"""The deadline alert's callback: what it says, and that it POSTs it to a real loopback webhook (or
logs a failing one without raising: the triggerer must not go down for it)."""
from __future__ import annotations

import asyncio
import logging

from pipelines.orchestration import alerts

CONTEXT = {"dag_run": {"dag_id": "lifecycle__text-classifier", "dag_run_id": "manual__1", "state": "running",
                       "queued_at": "2026-11-27T03:00:00Z"}, "deadline": {"id": "d1"}}


def test_the_message_names_the_run_its_state_and_the_deadline():
    body = alerts.message("text-classifier", 6.0, CONTEXT)
    assert body["text"] == ("lifecycle__text-classifier run manual__1 is not done 6 h after it was queued "
                            "(state running); look at it in Airflow")
    assert (body["run_id"], body["state"], body["queued_at"]) == ("manual__1", "running", "2026-11-27T03:00:00Z")
    assert "run ? is not done" in alerts.message("m", 1, None)["text"]  # no context: still says something


def test_run_overdue_posts_to_the_webhook_and_survives_a_failing_one(monkeypatch, caplog):
    from fastapi import FastAPI

    from tests.serving_support import start_loopback

    got = []
    hook = FastAPI()

    @hook.post("/hook")
    async def receive(body: dict):
        got.append(body)
        return {"ok": True}

    server, url = start_loopback(hook)
    try:
        monkeypatch.setenv("TEST_ALERT_HOOK", f"{url}/hook")
        sent = asyncio.run(alerts.run_overdue("text-classifier", 6.0, "TEST_ALERT_HOOK", context=CONTEXT))
        assert got == [sent] and sent["run_id"] == "manual__1"
        monkeypatch.setenv("TEST_ALERT_HOOK", f"{url}/missing")  # 404: logged, not raised
        with caplog.at_level(logging.WARNING, logger="pipelines.orchestration.alerts"):
            asyncio.run(alerts.run_overdue("text-classifier", 6.0, "TEST_ALERT_HOOK", context=CONTEXT))
        assert "deadline alert webhook (TEST_ALERT_HOOK) failed: HTTPStatusError" in caplog.text
        assert "is not done 6 h after it was queued" in caplog.text and len(got) == 1
    finally:
        server.should_exit = True
