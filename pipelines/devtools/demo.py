"""The main job on the embedded default, orchestrated by Airflow: each model's `lifecycle__<model>`
DAG run with `airflow dags test` on a SQLite metadata DB, then each champion served and its lineage
verified. Each classifier shows both of the gate's outcomes: a first model, a challenger on a good
new weekly drop (promoted) and one on a drop with a labelling accident that passes validation (the
gate rejects it; the champion keeps serving). The generative model runs once (training an LLM on
two CPU cores is the slow part; its gate's rejections are tested in tests/).

Inputs: the project checkout (projects/<model>/ with params.yaml and dvc.yaml, dags/, .dvc/ with the
local default remote). Outputs, all git-ignored: the generated drops in `projects/<model>/data/raw/`,
`.airflow/` (metadata DB, logs, this machine's worker DVC cache and task workspaces, the demo's run
logs in `.airflow/demo-logs/`), `registry/` and the DVC remote `.dvc-storage/`; in git, refs only:
`refs/runs/<model>/<run>` (each run's commits) and the branch `lineage`. The checkout's files are
never written by a run. The terminal shows each run's story (`story.render`) and a final table.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pipelines.core.config import Params, load_params
from pipelines.core.errors import CheckFailed, ConfigError
from pipelines.devtools import airflow_local, story
from pipelines.devtools.sample_data import write_sample
from pipelines.orchestration import records
from pipelines.registry import audit as lineage
from pipelines.tasks import task_spec

FIRST = "text-classifier"
# What the demo asks each served champion, by the model's sample domain.
QUESTIONS = {"banking": "my new card still has not arrived", "it_helpdesk": "I cannot connect to the VPN from home",
             "support_assistant": "Urgent: I lost my card last night and someone paid £240.00 at Tesco with it."}


@dataclass(frozen=True)
class Round:
    """One lifecycle run of the demo: the drop it adds and what the gate must decide on it."""

    title: str
    rows: int
    seed: int
    expect: str  # promoted | rejected | stopped
    mislabelled: bool = False
    faulty: bool = False
    keep_drop: bool = True  # False: the drop is removed after the run (it must not feed later runs)


FIRST_MODEL = Round("run 1, the first model", 2000, 0, "promoted")
ROUNDS = (
    FIRST_MODEL,
    Round("run 2, a challenger on a good new weekly drop", 600, 1, "promoted"),
    Round("run 3, a drop with a labelling accident (passes validation)", 800, 2, "rejected",
          mislabelled=True, keep_drop=False),
)
FAULTY = Round("a drop that breaks the data contract", 300, 7, "stopped", faulty=True, keep_drop=False)


def lifecycle_run(root: Path, model: str, title: str, verbose: bool) -> tuple[dict, str]:
    """One `airflow dags test lifecycle__<model>` run; returns its run record and the log's path."""
    before = time.time()
    dag_id = f"lifecycle__{model}"
    logs = root / ".airflow" / "demo-logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{dag_id}-{time.strftime('%Y%m%dT%H%M%S')}.log"
    _say(f"\n--- {model}: {title} (airflow dags test {dag_id}; full log: {log.relative_to(root)})")
    done = airflow_local.dags_test(root, dag_id, {}, log=log, verbose=verbose)
    runs = records.list_runs(str(root), model, limit=1)
    record = dict(runs[0]) if runs and runs[0].get("started_at", 0) >= before else {}
    record["exit_code"] = done.returncode
    record["seconds"] = round(time.time() - before, 1)
    return record, str(log.relative_to(root))


def _models(root: Path) -> dict[str, Params]:
    return {p.parent.name: load_params(p) for p in sorted((root / "projects").glob("*/params.yaml"))}


def _rounds(params: Params, faulty_drop: bool, second_run: bool) -> list[Round]:
    if not task_spec(params.data.task).labelled:
        return [FIRST_MODEL]
    rounds = list(ROUNDS if second_run else ROUNDS[:1])
    return rounds + [FAULTY] if faulty_drop else rounds


def run_demo(faulty_drop: bool = False, second_run: bool = True, verbose: bool = False) -> dict:
    """Run every model's lifecycle DAG in the current checkout, serve each champion, verify its lineage."""
    root = Path.cwd()
    if not (root / "projects").is_dir() or not (root / ".dvc").is_dir() or not (root / "dags").is_dir():
        raise ConfigError("run the demo from the project root (projects/, dags/ and .dvc/ not found here)")
    models = _models(root)
    if FIRST not in models:
        raise ConfigError(f"the demo needs the model folder projects/{FIRST}/")
    airflow_local.setup(root)
    summary: dict = {"runs": [], "models": {}}
    for model, params in models.items():
        raw = root / "projects" / model / params.data.raw
        for n, rnd in enumerate(_rounds(params, faulty_drop, second_run)):
            summary["runs"].append(_play(root, model, params, raw, rnd, verbose, first=n == 0))
        summary["models"][model] = _verify_and_serve(root, model, params, verbose)
    _say("\n" + story.table(summary["runs"]))
    summary["cost"] = _cost(root, models, summary["runs"])
    return summary


# Seconds per load level when the demo measures a champion: enough for a classifier's hundreds of
# requests; a generative model's answers take seconds each on CPU, so fewer, longer levels.
MEASURE_SECONDS = {True: 2.0, False: 10.0}  # labelled task?


def _cost(root: Path, models: dict[str, Params], runs: list[dict]) -> dict:
    """What it all cost: each champion measured on loopback and set against API prices (with the
    monthly-bill plot), each classifier's routing frontier, and the compute of the demo's runs."""
    from pipelines.serving import capacity, route_tune

    _say("\n== What it costs (pipelines cost, pipelines route tune; prices: params' cost section)")
    out = {}
    for model, params in models.items():
        folder = root / "projects" / model
        served = capacity.report(model, folder, params,
                                 measure_seconds=MEASURE_SECONDS[task_spec(params.data.task).labelled])
        if "rows" in served:
            capacity.write_plot(folder, served)
        routed = route_tune.report(model, folder, params)
        if "frontier" in routed:
            route_tune.write(folder, routed)
        _say(capacity.table(served))
        if task_spec(params.data.task).labelled:
            _say(route_tune.table(routed, step=0.25))
        out[model] = {"served": served, "routed": routed}
    spent = [r["compute_usd"] for r in runs if isinstance(r.get("compute_usd"), (int, float))]
    _say(f"\n  lifecycle compute: {len(runs)} runs, ${sum(spent):.4f} in all"
         + (f" ({len(runs) - len(spent)} without a cost)" if len(spent) < len(runs) else "")
         + " (each run's stages at their workers' hourly price; pipelines cost --runs)")
    return {"models": out, "runs_usd": sum(spent)}


def _play(root: Path, model: str, params: Params, raw: Path, rnd: Round, verbose: bool, first: bool) -> dict:
    """Add the round's drop, run the lifecycle, tell its story, check it decided as the round expects."""
    drop = write_sample(raw, rows=rnd.rows, seed=rnd.seed, faulty=rnd.faulty, mislabelled=rnd.mislabelled,
                        domain=params.lifecycle.sample_domain)
    try:
        record, log = lifecycle_run(root, model, f"{rnd.title}: +{drop.name}, {rnd.rows} rows", verbose)
    finally:
        if not rnd.keep_drop:
            drop.unlink(missing_ok=True)
    reports = story.evidence(root, model, record)
    _say(story.render(model, rnd.title, record, reports, log))
    if not rnd.keep_drop:
        _say(f"  cleanup   {drop.name} removed from the checkout (its run's commits keep it in DVC)")
    row = {"model": model, "run": record.get("run_id"), **story.outcome(record, reports),
           "exit_code": record.get("exit_code"), "seconds": record.get("seconds"), "log": log,
           "gate": record.get("gate"), "promotion": record.get("promotion"),
           "lineage_commit": record.get("lineage_commit"), "note": record.get("note"),
           "compute_usd": (record.get("compute") or {}).get("usd")}
    got = ("stopped" if record.get("failed") or record.get("exit_code") else
           "promoted" if (record.get("promotion") or {}).get("changed") else "rejected")
    if got != rnd.expect and (first or rnd.expect != "promoted" or got == "stopped"):
        raise CheckFailed(f"{model} {rnd.title}: expected {rnd.expect}, the run {got}: {record.get('note')} "
                          f"(log: {log})")
    return row


def _verify_registry(folder: Path, model: str, params: Params) -> dict:
    """`pipelines registry verify`: the ledger's chain, every signature, the head git keeps, every file."""
    from pipelines.registry import access
    from pipelines.registry import store as registry

    store = access.model_store(params, model, folder)
    problems = registry.verify(store)
    if problems:
        raise CheckFailed(f"the registry of {model} did not verify: {problems[0]}")
    entries = registry.read_ledger(store)
    signers = sorted({(e.get("signature") or {}).get("key") or "unsigned" for e in entries})
    kept = store.anchor.read(store.model, store.location) if store.anchor else None
    _say(f"== {model}: registry verified (pipelines registry verify): {len(entries)} ledger entries, "
         + (f"each signed by key {signers[0][:12]}... (registry.trusted_keys_file)" if store.keys.trusted
            and signers != ["unsigned"] else "UNSIGNED (no registry.trusted_keys)")
         + f", chain, manifests and every file re-hashed; git keeps its head {kept['seq'] if kept else '-'}")
    return {"entries": len(entries), "signed_by": signers, "trusted_keys": list(store.keys.trusted),
            "head_in_git": kept}


def _verify_and_serve(root: Path, model: str, params: Params, verbose: bool = False) -> dict:
    folder = root / "projects" / model
    checked = _verify_registry(folder, model, params)
    chain = lineage.trace(params, model, alias="champion", root=folder)
    for link in chain["links"] if verbose or not chain["verified"] else []:
        _say(f"  lineage {link['status']:>8}  {link['step']:<15} {link['detail']}")
    if not chain["verified"]:
        raise CheckFailed(f"the lineage of {model}'s champion did not verify: {chain['links']}")
    _say(f"\n== {model}: champion v{chain['version']} lineage verified ({len(chain['links'])} links, served "
         "model back to the raw rows; `pipelines lineage` shows each)")
    return {"registry": checked,
            "lineage": {"version": chain["version"], "verified": True, "branch": params.lineage.branch,
                        "runs": f"refs/runs/{model}/", "remote": _remote_url(root)},
            "served": _serve_once(folder, params)}


def _serve_once(folder: Path, params: Params) -> dict:
    """Start the real server on a free loopback port, ask it one request of each kind it supports."""
    import socket

    import httpx

    from pipelines.serving.engine import wait_ready

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PIPELINES_API_KEYS": ""}
    proc = subprocess.Popen([sys.executable, "-m", "pipelines", "serve", "--port", str(port)], cwd=folder, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_ready(url, timeout=180, proc=proc)
        except (RuntimeError, TimeoutError) as err:
            raise CheckFailed(f"the demo server did not come up: {err}") from None
        answers = {}
        text = QUESTIONS[params.lifecycle.sample_domain]
        if task_spec(params.data.task).labelled:
            r = httpx.post(f"{url}/v1/classify", json={"texts": [text]}, timeout=60)
            answers["classify"] = r.json()["results"][0] | {"text": text, "model_version": r.json()["model_version"]}
        else:
            r = httpx.post(f"{url}/v1/chat/completions", timeout=180,
                           json={"messages": [{"role": "user", "content": text}], "max_tokens": 96})
            answers["chat"] = r.json()["choices"][0]["message"] | {"asked": text,
                                                                   "model_version": r.json()["model_version"]}
        answer = answers.get("classify", {}).get("label") or answers.get("chat", {}).get("content")
        _say(f"  served    v{r.json()['model_version']} on {url}\n    asked:   {text}\n    answer:  {answer}")
        return answers
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _remote_url(root: Path) -> str:
    from pipelines.orchestration.runspace import Shared, dvc_remote_url

    return dvc_remote_url(Shared(str(root), "", ""), root)[1]


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
