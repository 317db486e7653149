"""Stage `validate`: check a dataset against the data contract with a Great Expectations suite.

Inputs: a dataset path (file or directory of drops), the `data` and `validate` sections of
params.yaml. Outputs (in the report dir): `result.json` (machine-readable verdict, every check
with counts and example rows, dataset file hashes) and `data_docs/` (GX Data Docs HTML); and a
quarantine JSONL file holding the rows that failed row-level checks, with reasons. The raw
input is only read. Verdicts: `passed`, `passed_with_quarantine` (row failures within the
tolerance), `failed` (raises CheckFailed, exit 1).
"""
from __future__ import annotations

import html
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from pipelines.core.config import DataParams, ValidateParams
from pipelines.core.contract import Check, build_checks, validation_frame
from pipelines.core.dataio import atomic_dir, atomic_write_text, dataset_fingerprint, read_dataset, write_json
from pipelines.core.errors import CheckFailed

MAX_EXAMPLES = 5


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one expectation, in the words a data owner needs."""

    check: str
    expectation: str
    column: str | None
    level: str  # "row" (quarantinable), "dataset" or "info"
    success: bool
    unexpected_count: int = 0
    unexpected_percent: float = 0.0
    observed_value: Any = None
    examples: list[str] = field(default_factory=list)
    detail: str = ""


@dataclass(frozen=True)
class Outcome:
    status: str  # passed | passed_with_quarantine | failed
    rows: int
    checks: list[CheckResult]
    quarantine: pd.DataFrame

    @property
    def success(self) -> bool:
        return self.status != "failed"

    @property
    def failed(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.success and c.level != "info"]


def _gx():
    """Import GX lazily (it is slow) with analytics and progress bars off."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    import great_expectations as gx

    return gx


def run_suite(frame: pd.DataFrame, data: DataParams, rules: ValidateParams,
              docs_dir: Path | None = None) -> Outcome:
    """Validate an in-memory frame (with `_source`/`_row`); optionally build Data Docs."""
    gx = _gx()
    from great_expectations.data_context.types.base import ProgressBarsConfig

    vframe = validation_frame(frame, data)
    checks = build_checks(frame, vframe, data, rules)
    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    batch = (ctx.data_sources.add_pandas("dataset").add_dataframe_asset("rows")
             .add_batch_definition_whole_dataframe("whole"))
    suite = ctx.suites.add(gx.ExpectationSuite(name="data_contract"))
    for check in checks:
        suite.add_expectation(check.expectation)
    vd = ctx.validation_definitions.add(gx.ValidationDefinition(name="validate", data=batch, suite=suite))
    checkpoint = ctx.checkpoints.add(gx.Checkpoint(
        name="validate", validation_definitions=[vd], actions=[],
        result_format={"result_format": "COMPLETE", "partial_unexpected_count": MAX_EXAMPLES,
                       "return_unexpected_index_query": False},
    ))
    run = checkpoint.run(batch_parameters={"dataframe": vframe})
    (validation,) = run.run_results.values()
    by_id = {r.expectation_config.id: r for r in validation.results}  # GX orders results its own way
    raw = [by_id[check.expectation.id] for check in checks]
    results = [_to_result(check, r, frame) for check, r in zip(checks, raw)]
    outcome = _verdict(frame, results, checks, raw, rules)
    if docs_dir is not None:
        _data_docs(ctx, run, docs_dir)
    return outcome


def _data_docs(ctx: Any, run: Any, docs_dir: Path) -> None:
    """GX Data Docs of the run, every value that came from the data HTML-escaped first: GX writes the
    unexpected values it shows into the page as they are, so a `<script>` in a row would run there."""
    ctx.add_data_docs_site(site_name="report", site_config={
        "class_name": "SiteBuilder",
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(Path(docs_dir).resolve())},
    })
    for identifier, validation in run.run_results.items():
        for r in validation.results:
            r.result = _escaped(r.result)
        ctx.validation_results_store.set(identifier, validation)
    ctx.build_data_docs(site_names=["report"])


def _escaped(value: Any) -> Any:
    if isinstance(value, str):
        return html.escape(value)
    if isinstance(value, (list, tuple)):
        return [_escaped(v) for v in value]
    if isinstance(value, dict):
        return {k: _escaped(v) for k, v in value.items()}
    return value


def _to_result(check: Check, r: Any, frame: pd.DataFrame) -> CheckResult:
    res = r.result or {}
    indices = res.get("unexpected_index_list") or []
    examples = [f"{frame['_source'].iat[i]}:{frame['_row'].iat[i]}" for i in indices[:MAX_EXAMPLES]]
    exc = (r.exception_info or {}).get("exception_message") if not r.success else None
    return CheckResult(
        check=check.name, expectation=r.expectation_config.type, column=check.column,
        level=check.level, success=bool(r.success),
        unexpected_count=int(res.get("unexpected_count") or 0),
        unexpected_percent=round(float(res.get("unexpected_percent") or 0.0), 4),
        observed_value=_plain(res.get("observed_value")), examples=examples,
        detail=check.describe(res) if not r.success or check.level == "info" else (exc or ""),
    )


def _plain(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except TypeError:
        return str(value)


def _verdict(frame: pd.DataFrame, results: list[CheckResult], checks: list[Check],
             raw: list[Any], rules: ValidateParams) -> Outcome:
    bad_rows: dict[int, list[str]] = {}
    for check, result, r in zip(checks, results, raw):
        if check.level == "row" and not result.success:
            for i in (r.result or {}).get("unexpected_index_list") or []:
                bad_rows.setdefault(int(i), []).append(check.name)
    hard_fail = any(not r.success for r in results if r.level == "dataset")
    within = len(bad_rows) <= rules.quarantine_tolerance * len(frame)
    if hard_fail or (bad_rows and not within):
        status = "failed"
    else:
        status = "passed_with_quarantine" if bad_rows else "passed"
    order = sorted(bad_rows)
    quarantine = frame.iloc[order].copy()
    quarantine["_reasons"] = [bad_rows[i] for i in order]
    return Outcome(status=status, rows=len(frame), checks=results, quarantine=quarantine)


def validate(path: str | Path, data: DataParams, rules: ValidateParams,
             report_dir: str | Path | None = None, quarantine_path: str | Path | None = None) -> Outcome:
    """Validate the dataset at `path`; write result.json, Data Docs and the quarantine file.

    Raises InputError (exit 2) for unreadable input and CheckFailed (exit 1) when invalid.
    """
    report_dir = Path(report_dir or rules.report_dir)
    quarantine_path = Path(quarantine_path or rules.quarantine_path)
    frame = read_dataset(path)
    with atomic_dir(report_dir, owner="validate") as tmp:
        outcome = run_suite(frame, data, rules, docs_dir=tmp / "data_docs")
        write_json(tmp / "result.json", _result_doc(path, frame, outcome, data, rules, quarantine_path))
    _write_quarantine(quarantine_path, outcome.quarantine)
    _report(outcome, rules, report_dir, quarantine_path)
    if not outcome.success:
        raise CheckFailed(f"validation failed: {len(outcome.failed)} check(s) failed; see {report_dir / 'result.json'}")
    return outcome


def _result_doc(path: str | Path, frame: pd.DataFrame, outcome: Outcome, data: DataParams,
                rules: ValidateParams, quarantine_path: Path) -> dict[str, Any]:
    return {
        "status": outcome.status,
        "success": outcome.success,
        "rows": outcome.rows,
        "quarantined_rows": len(outcome.quarantine),
        "quarantine_tolerance": rules.quarantine_tolerance,
        "quarantine_path": str(quarantine_path),
        "failed_checks": [c.check for c in outcome.failed],
        "checks": [asdict(c) for c in outcome.checks],
        "dataset": {"path": str(path), "columns": [c for c in frame.columns if not c.startswith("_")],
                    "files": dataset_fingerprint(path)},
        "params": {"data": data.model_dump(mode="json"), "validate": rules.model_dump(mode="json")},
        "data_docs": "data_docs/index.html",
        "gx_version": _gx().__version__,
    }


def _write_quarantine(path: Path, rows: pd.DataFrame) -> None:
    """Always (re)write the quarantine file, empty when nothing is quarantined."""
    records = rows.astype(object).where(rows.notna(), None).to_dict(orient="records")
    lines = [json.dumps(rec, ensure_ascii=False, default=str) for rec in records]
    atomic_write_text(path, "".join(line + "\n" for line in lines))


def _report(outcome: Outcome, rules: ValidateParams, report_dir: Path, quarantine_path: Path) -> None:
    for c in outcome.failed:
        where = f" on '{c.column}'" if c.column else ""
        rows = f" e.g. rows {', '.join(c.examples)}" if c.examples else ""
        print(f"FAILED {c.check} ({c.expectation}{where}): {c.detail}{rows}", file=sys.stderr)
    for c in outcome.checks:
        if c.level == "info" and c.unexpected_count:
            print(f"note: {c.check}: {c.detail}", file=sys.stderr)
    if outcome.status == "passed_with_quarantine":
        share = len(outcome.quarantine) / max(outcome.rows, 1)
        print(f"warning: {len(outcome.quarantine)} of {outcome.rows} rows ({share:.2%}) quarantined to "
              f"{quarantine_path} (tolerance {rules.quarantine_tolerance:.2%})", file=sys.stderr)
    elif outcome.status == "failed" and len(outcome.quarantine):
        share = len(outcome.quarantine) / max(outcome.rows, 1)
        within = len(outcome.quarantine) <= rules.quarantine_tolerance * outcome.rows
        verdict = ("are within the quarantine tolerance of {:.2%}, but dataset-level checks failed" if within
                   else "exceed the quarantine tolerance of {:.2%}").format(rules.quarantine_tolerance)
        print(f"row-level failures: {len(outcome.quarantine)} rows ({share:.2%}) {verdict}", file=sys.stderr)
    print(f"validation {outcome.status}: {outcome.rows} rows, {len(outcome.checks)} checks; "
          f"report {report_dir / 'result.json'}, data docs {report_dir / 'data_docs' / 'index.html'}",
          file=sys.stderr)
