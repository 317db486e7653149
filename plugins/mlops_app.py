"""The FastAPI app behind the "Models" page: server-rendered HTML (or JSON) over the registry,
the lifecycle run records and `pipelines.lineage`. Every route needs an Airflow user with DAG read access."""
from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

REPO = Path(os.environ.get("PIPELINES_REPO") or Path(__file__).resolve().parents[1])
ESC = html.escape


async def airflow_user(request: Request):
    """The Airflow user of this request (Bearer JWT or the UI's session cookie), with DAG read access."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.core_api.security import resolve_user_from_token

    header = request.headers.get("authorization", "")
    token = header[7:] if header.lower().startswith("bearer ") else request.cookies.get("_token")
    user = await resolve_user_from_token(token)  # 401 without a token, 403 for a bad one
    if not get_auth_manager().is_authorized_dag(method="GET", user=user):
        raise HTTPException(status_code=403, detail="needs read access to DAGs")
    return user


app = FastAPI(title="MLOps: models, versions, gate decisions, lineage", dependencies=[Depends(airflow_user)],
              docs_url=None, redoc_url=None, openapi_url=None)


def _params():
    from pipelines.config import load_params

    return load_params(REPO / "params.yaml")


def _store(model: str):
    from pipelines import registry

    root = _params().registry.root
    root = root if "://" in root or Path(root).is_absolute() else str(REPO / root)
    return registry.open_store(root, model)


def _models() -> list[str]:
    params = _params()
    root = params.registry.root if Path(params.registry.root).is_absolute() else REPO / params.registry.root
    found = sorted(p.parent.name for p in Path(root).glob("*/ledger.jsonl")) if "://" not in str(root) else []
    return found or [params.registry.model_name]


def _records() -> list[dict[str, Any]]:
    runs = sorted((REPO / ".lifecycle" / "runs").glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    return [json.loads(p.read_text(encoding="utf-8")) for p in runs]


def _page(title: str, body: str) -> HTMLResponse:
    style = ("body{font-family:system-ui,sans-serif;margin:1.5em}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}"
             ".ok{color:#067d17}.bad{color:#b00020}.alias{background:#e0ecff;border-radius:4px;padding:1px 6px;margin:0 2px}")
    return HTMLResponse(f"<!doctype html><html><head><meta charset='utf-8'><title>{ESC(title)}</title>"
                        f"<style>{style}</style></head><body><h1>{ESC(title)}</h1>{body}</body></html>")


def _wants_json(request: Request) -> bool:
    return request.query_params.get("format") == "json"


@app.get("/")
def models(request: Request) -> Response:
    from pipelines import registry

    data = []
    for model in _models():
        entries = registry.read_ledger(_store(model))
        data.append({"model": model, "aliases": registry.aliases(entries), "versions": sorted(registry.registered(entries))})
    if _wants_json(request):
        return JSONResponse(data)
    rows = "".join(f"<tr><td><a href='models/{quote(d['model'])}'>{ESC(d['model'])}</a></td><td>{len(d['versions'])}</td>"
                   f"<td>{' '.join(f'<span class=alias>{ESC(a)}=v{v}</span>' for a, v in sorted(d['aliases'].items()))}</td></tr>"
                   for d in data)
    return _page("Models", f"<table id='models'><tr><th>model</th><th>versions</th><th>aliases</th></tr>{rows}</table>")


@app.get("/models/{model}")
def model_page(model: str, request: Request) -> Response:
    from pipelines import registry

    store = _store(model)
    entries = registry.read_ledger(store)
    if not entries:
        raise HTTPException(status_code=404, detail=f"no model {model!r}")
    current = registry.aliases(entries)
    versions = []
    for number in sorted(registry.registered(entries), reverse=True):
        m = registry.show_version(store, number)
        decision = m.get("gate_decision") or {}
        versions.append({"version": number, "aliases": [a for a, v in current.items() if v == number],
                         "created_at": m.get("created_at"), "gate_passed": decision.get("passed"),
                         "rules": len(decision.get("rules", [])), "run_id": (m.get("run") or {}).get("run_id"),
                         "triggered_by": m.get("triggered_by")})
    decisions = [{"run_id": r.get("run_id"), "note": r.get("note"), "gate": r.get("gate")} for r in _records()]
    if _wants_json(request):
        return JSONResponse({"model": model, "aliases": current, "versions": versions, "ledger": entries,
                             "gate_decisions": decisions})
    vrows = "".join(
        f"<tr><td><a href='{quote(model)}/versions/{v['version']}'>v{v['version']}</a></td>"
        f"<td>{' '.join(f'<span class=alias>{ESC(a)}</span>' for a in v['aliases'])}</td><td>{ESC(str(v['created_at']))}</td>"
        f"<td class='{'ok' if v['gate_passed'] else 'bad'}'>{'passed' if v['gate_passed'] else 'not passed'} ({v['rules']} rules)</td>"
        f"<td>{_run_link(v['run_id'])}</td><td>{ESC(str(v['triggered_by']))}</td></tr>" for v in versions)
    drows = "".join(
        f"<tr><td>{_run_link(d['run_id'])}</td><td class='{'ok' if (d['gate'] or {}).get('passed') else 'bad'}'>"
        f"{ESC(str((d['gate'] or {}).get('summary', '-')))}</td><td>{ESC(str(d['note']))}</td></tr>" for d in decisions)
    lrows = "".join(f"<tr><td>{e['seq']}</td><td>{ESC(str(e['at']))}</td><td>{ESC(e['action'])}</td><td>{_version(e['version'])}</td>"
                    f"<td>{ESC(str(e['by']))}</td><td>{ESC(str(e.get('reason', '')))}</td></tr>" for e in entries)
    return _page(f"{model}", "<h2>Versions</h2><table id='versions'><tr><th>version</th><th>aliases</th><th>created</th>"
                 f"<th>gate</th><th>run</th><th>triggered by</th></tr>{vrows}</table>"
                 "<h2>Gate decisions of lifecycle runs</h2><table id='decisions'><tr><th>run</th><th>gate</th><th>outcome</th></tr>"
                 f"{drows}</table><h2>Ledger</h2><table id='ledger'><tr><th>#</th><th>at</th><th>action</th><th>version</th>"
                 f"<th>by</th><th>reason</th></tr>{lrows}</table>")


def _version(number: int | None) -> str:
    return "-" if number is None else f"v{number}"


def _run_link(run_id: str | None) -> str:
    if not run_id:
        return "-"
    return f"<a href='/mlops/runs/{quote(run_id, safe='')}'>{ESC(run_id)}</a>"


@app.get("/models/{model}/versions/{version}")
def version_page(model: str, version: int, request: Request) -> Response:
    from pipelines import lineage
    from pipelines.errors import PipelineError

    try:
        chain = lineage.trace(_params(), model, alias=None, version=version, root=REPO)
    except PipelineError as err:
        raise HTTPException(status_code=404, detail=str(err)) from None
    if _wants_json(request):
        return JSONResponse(chain)
    return HTMLResponse(lineage.render_html(chain))


@app.get("/runs/{run_id}")
def run_page(run_id: str, request: Request) -> Response:
    from pipelines.lifecycle import read_record

    record = read_record(REPO, run_id)
    if record is None:
        if _wants_json(request):
            raise HTTPException(status_code=404, detail=f"no lifecycle record for run {run_id!r}")
        return _page(f"Run {run_id}", "<p>This run left no lifecycle record (not a model_lifecycle run, or it "
                     "stopped before its first task).</p>")
    if _wants_json(request):
        return JSONResponse(record)
    promo = record.get("promotion")
    link = (f"<p>Lineage: <a href='/mlops/models/{quote(promo['model'])}/versions/{promo['version']}'>"
            f"{ESC(promo['model'])} v{promo['version']}</a></p>") if promo else ""
    return _page(f"Run {run_id}", f"<p id='note'>{ESC(str(record.get('note')))}</p>{link}"
                 f"<pre>{ESC(json.dumps(record, indent=2, sort_keys=True, default=str))}</pre>")
