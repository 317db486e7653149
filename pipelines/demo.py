"""The main job on the embedded default: sample data -> DVC-tracked raw drop -> `dvc repro`
(validate -> prepare -> train MiniLM + LoRA -> evaluate -> gate) -> promote to the registry.

Inputs: the project checkout (dvc.yaml, params.yaml, .dvc/ with the local default remote).
Outputs, all git-ignored except the two DVC lineage files: `data/raw/` (generated drop),
`data/raw.dvc` and `dvc.lock` (lineage, yours to commit), `data/quarantine.jsonl`,
`data/prepared/`, `models/candidate/`, `checkpoints/train/`, `reports/`, `registry/` (versions,
ledger), `.dvc/cache/` and the remote `.dvc-storage/`.
With `faulty_drop`, a faulty weekly drop is added, shown to be stopped by `validate` (the
prepared data stays as it was), then removed again.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from pipelines import registry
from pipelines.config import load_params
from pipelines.errors import CheckFailed, ConfigError
from pipelines.sample_data import write_sample

DEMO_ROWS = 2000


def _dvc(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "DVC_NO_ANALYTICS": "1", "GX_ANALYTICS_ENABLED": "False"}
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], env=env, text=True, capture_output=True)
    if check and proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()
        raise CheckFailed(f"`dvc {' '.join(args)}` failed: {tail[-1] if tail else proc.returncode}")
    return proc


def run_demo(faulty_drop: bool = False) -> dict:
    """Run the data half of the lifecycle in the current checkout; return a summary."""
    if not Path("dvc.yaml").exists() or not Path(".dvc").is_dir():
        raise ConfigError("run the demo from the project root (dvc.yaml and .dvc/ not found here)")
    params = load_params()
    raw = Path(params.data.raw)
    drop = write_sample(raw, rows=DEMO_ROWS, seed=0)
    _say(f"sample drop: {drop} ({DEMO_ROWS} rows, deterministic)")
    _dvc("add", "--quiet", str(raw))
    store = registry.open_store(params.registry.root, params.registry.model_name)
    registry.init(store)
    repro = _dvc("repro", check=False)
    ran = [ln for ln in repro.stdout.splitlines() if ln.startswith(("Running stage", "Stage '"))]
    _say("dvc repro: " + "; ".join(ran))
    if repro.returncode != 0:
        reasons = [ln for ln in repro.stderr.splitlines() if ln.startswith(("gate rule failed", "FAILED", "error:"))]
        raise CheckFailed("the pipeline stopped before promotion: " + ("; ".join(reasons) or repro.stderr.strip()[-300:]))
    _dvc("push", "--quiet")
    registry.promote(store, params.registry.model_name, Path(params.train.output_dir), Path(params.gate.decision_path),
                     Path(params.evaluate.report_dir) / "metrics.json", reason="demo: passed gate")
    summary = _summary(params)
    summary["registry"] = {"root": params.registry.root, "aliases": registry.aliases(registry.read_ledger(store))}
    summary["served"] = _serve_once(params)
    if faulty_drop:
        summary["faulty_drop"] = _faulty_round(raw)
    _say(json.dumps(summary, indent=2))
    return summary


def _faulty_round(raw: Path) -> dict:
    """Add a faulty drop, show validate stopping it, then restore the good state."""
    bad = write_sample(raw, rows=300, seed=7, faulty=True)
    try:
        _dvc("add", "--quiet", str(raw))
        proc = _dvc("repro", check=False)
        verdict = [ln for ln in proc.stderr.splitlines() if ln.startswith(("FAILED", "error:", "row-level"))]
        _say(f"faulty drop {bad}: dvc repro exit {proc.returncode}; validate said:\n  " + "\n  ".join(verdict))
        return {"path": str(bad), "repro_exit": proc.returncode, "failures": verdict}
    finally:
        bad.unlink(missing_ok=True)
        _dvc("add", "--quiet", str(raw))
        _dvc("repro")


def _serve_once(params) -> dict:
    """Start the real server on a free loopback port, ask it one request of each kind it supports."""
    import socket

    import httpx

    from pipelines.serve import wait_ready

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PIPELINES_API_KEYS": ""}
    proc = subprocess.Popen([sys.executable, "-m", "pipelines", "serve", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_ready(url, timeout=180, proc=proc)
        except (RuntimeError, TimeoutError) as err:
            raise CheckFailed(f"the demo server did not come up: {err}") from None
        answers = {}
        if params.data.task == "classification":
            r = httpx.post(f"{url}/v1/classify", json={"texts": ["my new card still has not arrived"]}, timeout=60)
            answers["classify"] = r.json()["results"][0] | {"model_version": r.json()["model_version"]}
        else:
            r = httpx.post(f"{url}/v1/chat/completions", timeout=120,
                           json={"messages": [{"role": "user", "content": "hello"}], "max_tokens": 16})
            answers["chat"] = r.json()["choices"][0]["message"] | {"model_version": r.json()["model_version"]}
        _say(f"served {params.registry.model_name} v{r.json()['model_version']} on {url}: {answers}")
        return answers
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _summary(params) -> dict:
    result = json.loads((Path(params.validate_.report_dir) / "result.json").read_text(encoding="utf-8"))
    card = json.loads((Path(params.prepare.output_dir) / "data_card.json").read_text(encoding="utf-8"))
    trained = json.loads((Path(params.train.report_dir) / "metrics.json").read_text(encoding="utf-8"))
    decision = json.loads(Path(params.gate.decision_path).read_text(encoding="utf-8"))
    return {
        "validation": {"status": result["status"], "rows": result["rows"],
                       "report": str(Path(params.validate_.report_dir) / "result.json"),
                       "data_docs": str(Path(params.validate_.report_dir) / "data_docs" / "index.html")},
        "prepared": {"dir": params.prepare.output_dir,
                     "splits": {k: v["rows"] for k, v in card["splits"].items()},
                     "labels": card["num_labels"], "dropped": card["dropped"], "pii_redacted": card["pii_redactions"]},
        "training": {"model": params.train.output_dir, "base_model": params.train.base_model,
                     **{k: trained[k] for k in ("steps", "eval_loss", "eval_accuracy", "duration_seconds")
                        if k in trained}},
        "gate": {"passed": decision["passed"], "candidate": decision["candidate_hash"][:12],
                 "rules": {r["rule"]: r["passed"] for r in decision["rules"]}},
        "lineage": {"dvc.lock": "dvc.lock", "raw": f"{params.data.raw}.dvc", "remote": _remote_url()},
    }


def _remote_url() -> str:
    proc = _dvc("remote", "list", check=False)
    return proc.stdout.strip().splitlines()[0] if proc.stdout.strip() else ""


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
