"""The FastAPI app behind the "Models" page: server-rendered HTML (or JSON) over every model folder
(`projects/<model>/`), the registry, the lifecycle run records (read from each run's ref in the git
remote, PIPELINES_GIT_REMOTE or this checkout) and `pipelines.registry.audit`. Every route needs an Airflow
user with DAG read access."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jinja2
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from pipelines.core.errors import PipelineError

_NAMED = Path(os.environ.get("PIPELINES_REPO") or Path(__file__).resolve().parents[1])
REPO = _NAMED if _NAMED.is_dir() else Path(__file__).resolve().parents[1]  # a checkout moved since it was named
# Every stored value (ledger reasons, run notes, model names) is rendered through autoescaping templates.
TEMPLATES = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).resolve().parent / "templates"),
                               autoescape=True)


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


def _said(request: Request, status: int, message: str) -> Response:
    if _wants_json(request):
        return JSONResponse({"error": message}, status)
    return _page("error.html", status, title="Cannot show this page", message=message,
                 home=request.scope.get("root_path", "") + "/")


@app.exception_handler(PipelineError)
async def _named(request: Request, err: PipelineError) -> Response:
    """A model whose params do not parse, a damaged ledger or record: this page says which and why (409);
    every other page keeps working."""
    return _said(request, 409, str(err))


@app.exception_handler(Exception)
async def _unexpected(request: Request, err: Exception) -> Response:
    """Anything else is named on the page too (and logged by the server), never a bare 500."""
    return _said(request, 500, f"internal error: {type(err).__name__}: {str(err)[:300]}")


def _remote() -> str:
    return os.environ.get("PIPELINES_GIT_REMOTE") or str(REPO)


def _models() -> list[str]:
    """The model folders of this checkout (projects/<model>/params.yaml)."""
    return sorted(p.parent.name for p in (REPO / "projects").glob("*/params.yaml"))


def _folder(model: str) -> Path:
    from pipelines.core.config import check_model_name
    from pipelines.core.errors import ConfigError

    try:
        check_model_name(model)
    except ConfigError as err:
        raise HTTPException(status_code=404, detail=str(err)) from None
    if model not in _models():
        raise HTTPException(status_code=404, detail=f"no model {model!r}")
    return REPO / "projects" / model


def _params(model: str):
    from pipelines.core.config import load_params

    return load_params(_folder(model) / "params.yaml")


def _store(model: str):
    from pipelines.registry import access

    return access.model_store(_params(model), model, _folder(model))


def _records(model: str, limit: int = 50) -> list[dict[str, Any]]:
    from pipelines.orchestration import records

    return records.list_runs(_remote(), model, limit=limit)


def _page(template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    return HTMLResponse(TEMPLATES.get_template(template).render(**context), status_code=status_code)


def _wants_json(request: Request) -> bool:
    return request.query_params.get("format") == "json"


def _summary(model: str) -> dict[str, Any]:
    """One model's row; a damaged registry says what is wrong instead of failing the whole page."""
    from pipelines.core.errors import PipelineError
    from pipelines.orchestration.records import awaiting_approval
    from pipelines.registry import store as registry

    try:
        waiting = [r.get("run_id") for r in _records(model) if awaiting_approval(r)]
        entries = registry.read_ledger(_store(model))
    except HTTPException:
        raise
    except Exception as err:  # its params, records or ledger: this row says what, the others show
        said = str(err) if isinstance(err, (PipelineError, OSError)) else f"{type(err).__name__}: {err}"
        return {"model": model, "aliases": {}, "versions": [], "awaiting_approval": [], "error": said}
    return {"model": model, "aliases": registry.aliases(entries), "versions": sorted(registry.registered(entries)),
            "awaiting_approval": waiting}


@app.get("/")
def models(request: Request) -> Response:
    data = [_summary(model) for model in _models()]
    if _wants_json(request):
        return JSONResponse(data)
    return _page("models.html", title="Models", models=data)


def _version_row(store, number: int, reg: dict, current: dict[str, int]) -> dict[str, Any]:
    from pipelines.core.errors import PipelineError
    from pipelines.registry import store as registry

    row: dict[str, Any] = {"version": number, "aliases": [a for a, v in current.items() if v == number]}
    try:
        m = registry.read_manifest(store, number, reg)
    except (PipelineError, OSError) as err:
        return {**row, "created_at": None, "error": str(err)}
    decision = m.get("gate_decision") if isinstance(m.get("gate_decision"), dict) else {}
    run = m.get("run") if isinstance(m.get("run"), dict) else {}
    metrics = m.get("metrics") if isinstance(m.get("metrics"), dict) else {}
    return {**row, "created_at": m.get("created_at"), "gate_passed": decision.get("passed"),
            "rules": len(decision.get("rules") or []), "run_id": run.get("run_id"),
            "triggered_by": m.get("triggered_by"),
            "metrics": {k: float(metrics[k]) for k in CHARTED if isinstance(metrics.get(k), (int, float))}}


# The metrics a model's page charts across its versions (those the version's evaluation measured).
CHARTED = ("accuracy", "macro_f1", "min_class_recall", "json_valid", "field_match", "rouge_l", "golden_pass_rate")
CHART = {"width": 640, "height": 220, "pad": 36}


def chart(versions: list[dict[str, Any]]) -> dict[str, Any]:
    """Each charted metric as a line over the versions (oldest left, 0..1 bottom to top), in SVG
    coordinates, for the template to draw; no series when fewer than one version has metrics."""
    rows = sorted((v for v in versions if v.get("metrics")), key=lambda v: v["version"])
    w, h, pad = CHART["width"], CHART["height"], CHART["pad"]
    step = (w - 2 * pad) / max(1, len(rows) - 1)
    series = []
    for metric in CHARTED:
        points = [{"x": round(pad + i * step, 1), "y": round(h - pad - v["metrics"][metric] * (h - 2 * pad), 1),
                   "version": v["version"], "value": v["metrics"][metric]}
                  for i, v in enumerate(rows) if metric in v["metrics"]]
        if points:
            series.append({"metric": metric, "points": points,
                           "path": " ".join(f"{'M' if i == 0 else 'L'}{p['x']},{p['y']}" for i, p in enumerate(points))})
    return {**CHART, "series": series, "versions": [(round(pad + i * step, 1), v["version"]) for i, v in enumerate(rows)]}


def _outcome(record: dict[str, Any]) -> tuple[str, str]:
    """A run's outcome in a word (for the mark and its colour) and why."""
    from pipelines.orchestration.records import awaiting_approval

    gate = record.get("gate") if isinstance(record.get("gate"), dict) else {}
    promo = record.get("promotion") if isinstance(record.get("promotion"), dict) else {}
    said = record.get("review") if isinstance(record.get("review"), dict) else {}
    if record.get("failed"):
        failed = record["failed"] if isinstance(record["failed"], dict) else {}
        return f"stopped at {failed.get('task', '?')}", str(failed.get("error", ""))
    if gate and not gate.get("passed"):
        return "rejected", str(gate.get("reasons", ""))
    if promo:
        approved = f"; approved by {promo['approved_by']}" if promo.get("approved_by") else ""
        return f"promoted v{promo.get('version')}", f"gate passed ({gate.get('summary', '')}){approved}"
    if said.get("decision") == "rejected":
        return f"rejected by {said.get('by')}", f"gate passed ({gate.get('summary', '')}); {said.get('by')} " \
                                                f"rejected the promotion at {said.get('at')}; the champion keeps serving"
    if awaiting_approval(record):
        return "awaiting approval", f"gate passed ({gate.get('summary', '')}); a person must approve the promotion"
    return ("running", "") if not record.get("finished") else ("no promotion", str(record.get("note", "")))


def approval_link(model: str, run_id: str) -> str:
    """Where Airflow's UI asks for the answer (its Required Actions tab of the run's `approve` task)."""
    from urllib.parse import quote

    return f"/dags/{quote(f'lifecycle__{model}', safe='')}/runs/{quote(run_id, safe='')}/tasks/approve/required_actions"


def _decision(model: str, record: dict[str, Any]) -> dict[str, Any]:
    outcome, why = _outcome(record)
    run_id = record.get("run_id")
    return {"run_id": run_id, "note": record.get("note"), "outcome": outcome, "why": why,
            "gate": record.get("gate") if isinstance(record.get("gate"), dict) else None,
            "review": record.get("review") if isinstance(record.get("review"), dict) else None,
            "answer_at": approval_link(model, run_id) if outcome == "awaiting approval" and run_id else None}


@app.get("/models/{model}")
def model_page(model: str, request: Request) -> Response:
    from pipelines.core.errors import PipelineError
    from pipelines.registry import store as registry

    store = _store(model)
    try:
        entries = registry.read_ledger(store)
    except PipelineError as err:  # this model's ledger is damaged: say so, with status 409
        if _wants_json(request):
            return JSONResponse({"model": model, "error": str(err)}, 409)
        return _page("model.html", 409, title=model, model=model, problems=[str(err)], versions=[],
                     decisions=[], ledger=[], chart=chart([]))
    current = registry.aliases(entries)
    versions = [_version_row(store, n, reg, current) for n, reg in sorted(registry.registered(entries).items(), reverse=True)]
    decisions = [_decision(model, r) for r in _records(model)]
    if _wants_json(request):
        return JSONResponse({"model": model, "aliases": current, "versions": versions, "ledger": entries,
                             "gate_decisions": decisions})
    problems = [f"v{v['version']}: {v['error']}" for v in versions if v.get("error")]
    return _page("model.html", title=model, model=model, problems=problems, versions=versions,
                 decisions=decisions, ledger=entries, chart=chart(versions))


def _cost(model: str) -> dict[str, Any]:
    """What the model costs: served (self-hosted against API prices), routed (the frontier) and trained
    (every lifecycle run's compute), each from the same functions as `pipelines cost` / `route tune`."""
    from pipelines.core.errors import PipelineError
    from pipelines.serving import capacity, route_tune

    folder, params = _folder(model), _params(model)
    try:
        served = capacity.report(model, folder, params)
    except PipelineError as err:
        served = {"model": model, "unknown": str(err)}
    try:
        routed = route_tune.report(model, folder, params)
    except PipelineError as err:
        routed = {"model": model, "unknown": str(err)}
    runs = [{"run_id": r.get("run_id"), "note": r.get("note"), **{k: (r.get("compute") or {}).get(k)
                                                                   for k in ("usd", "seconds", "trained_tokens")}}
            for r in _records(model, 10_000)]
    lc = params.lifecycle
    so_far = route_tune.served_so_far(list(lc.serving_urls), model, os.environ.get(lc.serving_key_env))
    return {"model": model, "served": served, "routed": routed, "runs": runs, "so_far": so_far,
            "runs_usd": sum(r["usd"] for r in runs if isinstance(r["usd"], (int, float))),
            "runs_without_cost": sum(1 for r in runs if not isinstance(r["usd"], (int, float)))}


@app.get("/models/{model}/cost")
def cost_page(model: str, request: Request) -> Response:
    doc = _cost(model)
    if _wants_json(request):
        return JSONResponse(json.loads(json.dumps(doc, default=str)))
    return _page("cost.html", title=f"{model}: cost", **doc)


@app.get("/models/{model}/cost/{picture}.svg")
def cost_picture(model: str, picture: str) -> Response:
    """The cost page's pictures: `volume` (monthly bills against volume) and `frontier` (routing)."""
    from pipelines.core.errors import PipelineError
    from pipelines.economics import plot
    from pipelines.serving import capacity, route_tune

    draw = {"volume": (capacity.report, plot.volume_svg), "frontier": (route_tune.report, plot.frontier_svg)}.get(picture)
    if draw is None:
        raise HTTPException(status_code=404, detail=f"no picture {picture!r} (volume, frontier)")
    try:  # only what this picture needs: not the whole page's servers and run records
        return Response(draw[1](draw[0](model, _folder(model), _params(model))), media_type="image/svg+xml")
    except (ValueError, PipelineError) as err:
        raise HTTPException(status_code=404, detail=str(err)) from None


@app.get("/models/{model}/audit")
def audit_page(model: str, request: Request, since: str | None = None) -> Response:
    """The audit report `pipelines audit` writes, for the period from `since` (YYYY-MM-DD)."""
    from datetime import date

    from pipelines.core.errors import PipelineError
    from pipelines.registry import audit_report

    try:
        first = date.fromisoformat(since) if since else None
    except ValueError:
        raise HTTPException(status_code=422, detail=f"since: {since!r} is not a date (YYYY-MM-DD)") from None
    try:
        report = audit_report.build(_params(model), model, _folder(model), _records(model, 10_000), first)
    except PipelineError as err:  # a damaged ledger: said, with the status a conflict gets
        raise HTTPException(status_code=409, detail=str(err)) from None
    if _wants_json(request):
        return JSONResponse(json.loads(json.dumps(report, default=str)))
    return HTMLResponse(audit_report.render_html(report))


@app.get("/models/{model}/versions/{version}")
def version_page(model: str, version: int, request: Request) -> Response:
    from pipelines.core.errors import PipelineError
    from pipelines.registry import audit as lineage

    try:
        chain = lineage.trace(_params(model), model, alias=None, version=version, root=_folder(model))
    except PipelineError as err:
        raise HTTPException(status_code=404, detail=str(err)) from None
    try:
        said = lineage.answers(_params(model), model, version, root=_folder(model))
    except PipelineError as err:  # answers altered: the chain above already says so; show none
        said = [{"error": str(err)}]
    try:
        drawn = lineage.pictures(_params(model), model, version, root=_folder(model))
    except PipelineError as err:
        drawn = {"errors": [str(err)]}
    if _wants_json(request):
        return JSONResponse({**chain, "answers": said, "pictures": drawn})
    return HTMLResponse(lineage.render_html(chain, said, drawn))


@app.get("/dags/{dag_id}/runs/{run_id}")
def dag_run_page(dag_id: str, run_id: str, request: Request) -> Response:
    """From a DAG run's "Lifecycle" link: the run of `lifecycle__<model>` is that model's run."""
    if not dag_id.startswith("lifecycle__"):
        raise HTTPException(status_code=404, detail=f"{dag_id!r} is not a model lifecycle DAG")
    return run_page(dag_id.removeprefix("lifecycle__"), run_id, request)


@app.get("/models/{model}/runs/{run_id}")
def run_page(model: str, run_id: str, request: Request) -> Response:
    from pipelines.orchestration import records

    _folder(model)
    try:
        record = records.read(_remote(), model, run_id)
    except (OSError, RuntimeError):
        record = {"run_id": run_id, "note": "run record unreadable"}
    if record is None and _wants_json(request):
        raise HTTPException(status_code=404, detail=f"no lifecycle record for run {run_id!r}")
    if _wants_json(request):
        return JSONResponse(record)
    promo = record.get("promotion") if isinstance(record, dict) and isinstance(record.get("promotion"), dict) else None
    decision = _decision(model, {"run_id": run_id, **record}) if isinstance(record, dict) else None
    return _page("run.html", title=f"Run {run_id}", model=model, record=record, promo=promo, decision=decision,
                 pretty=json.dumps(record, indent=2, sort_keys=True, default=str))
