"""Orchestration overhead of a model's lifecycle DAG, the cost of a re-run with nothing changed, and
what a per-task workspace (checkout + pull + push) costs.

In one process, on fresh throw-away copies of this project with the same sample data and params:
1. baseline: the stages' own compute, each `pipelines <stage>` CLI run directly one after the other in
   the model's folder (validate, prepare, train, evaluate, gate, promote), no DVC and no Airflow;
2. the DAG `lifecycle__text-classifier` under `airflow dags test` (LocalExecutor, SQLite): every task in
   a fresh checkout of the run's ref, inputs pulled from and outputs pushed to the DVC remote;
3. the DAG again: the champion changed (v1 now exists), so `evaluate` and `gate` run again against it,
   the other stages come from DVC's run-cache;
4. the DAG a third time with nothing changed at all (data, params, code, champion): everything is
   restored from the run-cache in fresh workspaces;
5. with `--celery`: runs 2-4's figures on a real CeleryExecutor (PostgreSQL, Redis, two workers with
   their own caches; `train` on the `gpu` queue), from the runs' start and end times.
Prints per-task times, then one JSON object as the last line: `overhead_ratio` (DAG wall time / sum of
stage times; target <= 1.2), `rerun_ratio` (the unchanged run 4 / run 2; target <= 0.10), and
`workspace_seconds_per_task` (checkout + commit per stage task, run 1) and, from the unchanged
run, the seconds of each stage task's DVC step when nothing runs (pull, run-cache restore, push).

    python benchmarks/lifecycle_overhead.py [--rows 2000] [--epochs 7] [--celery]
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
STAGES = ("validate", "prepare", "train", "evaluate", "gate", "promote")
MODEL = "text-classifier"
DAG = f"lifecycle__{MODEL}"


def direct(repo: Path) -> dict[str, float]:
    from tests.lifecycle_support import pipelines

    pipelines(repo, "--model", MODEL, "registry", "init")
    times = {}
    for stage in STAGES:
        t0 = time.perf_counter()
        pipelines(repo, "--model", MODEL, stage)
        times[stage] = round(time.perf_counter() - t0, 2)
    return times


def dag_run(repo: Path) -> tuple[float, dict[str, float], dict]:
    from pipelines.devtools import airflow_local
    from pipelines.orchestration import records

    t0 = time.perf_counter()
    done = airflow_local.dags_test(repo, DAG, {}, stream=False)
    seconds = round(time.perf_counter() - t0, 2)
    if done.returncode != 0:
        sys.exit(f"error: the DAG run failed:\n{done.stdout[-3000:]}")
    return seconds, task_times(done.stdout), records.list_runs(str(repo), MODEL, limit=1)[0]


def task_times(log: str) -> dict[str, float]:
    marks = re.findall(r"^(\S+Z) .*\[DAG TEST\] (starting|end task) task_id=(\w+)", log, re.M)
    times, started = {}, {}
    for stamp, what, task in marks:
        at = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        if what == "starting":
            started[task] = at
        elif task in started:
            times[task] = round((at - started[task]).total_seconds(), 2)
    return times


def workspace_cost(record: dict) -> dict[str, float]:
    """Per stage task: the seconds spent on the workspace itself (checkout + commit of the run's ref;
    pulling inputs and pushing outputs are inside the stage's DVC step, `seconds`)."""
    keys = ("checkout_seconds", "commit_seconds")
    return {stage: round(sum(v.get(k, 0.0) for k in keys), 2) for stage, v in (record.get("stages") or {}).items()}


def celery_runs(tmp: Path, rows: int, sized: dict) -> dict:
    from tests.celery_support import celery_cluster
    from tests.lifecycle_support import make_project

    repo = make_project(tmp / "celery", rows=rows, **sized)
    walls = []
    with celery_cluster(tmp / "celery", repo, [MODEL]) as c:
        for _ in range(3):
            run = c.wait_run(DAG, c.trigger(DAG, {}), seconds=3600)
            start, end = (datetime.fromisoformat(run[k].replace("Z", "+00:00")) for k in ("start_date", "end_date"))
            walls.append(round((end - start).total_seconds(), 2))
            print(f"CeleryExecutor run: {walls[-1]} s", file=sys.stderr)
    return {"celery_first_seconds": walls[0], "celery_after_promotion_seconds": walls[1],
            "celery_unchanged_seconds": walls[2], "celery_rerun_ratio": round(walls[2] / walls[0], 3)}


def main() -> None:
    from pipelines.devtools import airflow_local
    from tests.lifecycle_support import make_project

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=7)
    parser.add_argument("--celery", action="store_true", help="also run the DAG on a real CeleryExecutor")
    args = parser.parse_args()
    sized = {"train": {"epochs": args.epochs, "max_length": 64, "checkpoint_every": 50}}
    with tempfile.TemporaryDirectory() as tmp:
        base = make_project(Path(tmp) / "direct", rows=args.rows, **sized)
        stage_times = direct(base)
        print(f"stages run directly: {stage_times} (sum {sum(stage_times.values()):.1f} s)", file=sys.stderr)
        repo = make_project(Path(tmp) / "dag", rows=args.rows, **sized)
        airflow_local.setup(repo)  # one-time deployment step (DB migration, pool), not part of a run
        first, first_tasks, first_record = dag_run(repo)
        print(f"DAG first run: {first:.1f} s; tasks {first_tasks}", file=sys.stderr)
        second, second_tasks, _ = dag_run(repo)
        print(f"DAG run after the promotion (evaluate against v1): {second:.1f} s; tasks {second_tasks}", file=sys.stderr)
        third, third_tasks, third_record = dag_run(repo)
        print(f"DAG run, nothing changed: {third:.1f} s; tasks {third_tasks}", file=sys.stderr)
        celery = celery_runs(Path(tmp), args.rows, sized) if args.celery else {}
    total = sum(stage_times.values())
    cost = workspace_cost(first_record)
    out = {"rows": args.rows, "epochs": args.epochs, "stage_seconds": stage_times, "stage_sum_seconds": round(total, 2),
           "dag_first_seconds": first, "dag_after_promotion_seconds": second, "dag_unchanged_seconds": third,
           "overhead_ratio": round(first / total, 3), "after_promotion_ratio": round(second / first, 3),
           "rerun_ratio": round(third / first, 3), "workspace_seconds_per_task": cost,
           "workspace_seconds_mean": round(sum(cost.values()) / max(len(cost), 1), 2),
           "unchanged_run_stages": {k: v.get("ran") for k, v in (third_record.get("stages") or {}).items()},
           "unchanged_run_dvc_seconds": {k: v.get("seconds") for k, v in (third_record.get("stages") or {}).items()},
           "first_run_tasks": first_tasks, "unchanged_run_tasks": third_tasks, **celery}
    out["target_met"] = out["overhead_ratio"] <= 1.2 and out["rerun_ratio"] <= 0.10
    print(json.dumps(out))


if __name__ == "__main__":
    main()
