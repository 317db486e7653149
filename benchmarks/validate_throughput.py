"""Throughput of the full GX validation suite against the same checks in plain pandas.

Generates N rows of the sample dataset (default 1,000,000), then in the same process times
(a) `pipelines.stages.validate.run_suite` (the full GX suite the `validate` stage runs, without the
Data Docs rendering) and (b) the same checks written directly in pandas: the same derived
columns, the same masks, counts, example rows and quarantine union. Prints a few lines, then one
JSON object as the last line: rows, gx_seconds, pandas_seconds, gx_rows_per_s,
pandas_rows_per_s, ratio (GX time / pandas time).
Targets: full suite on 1M rows < 30 s on 2 cores; ratio <= 3.

    python benchmarks/validate_throughput.py [--rows 1000000]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import pandas as pd

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

from pipelines.core import pii  # noqa: E402
from pipelines.core.config import DataParams, ValidateParams  # noqa: E402
from pipelines.core.contract import BLANK, LABEL_FORM, validation_frame  # noqa: E402
from pipelines.devtools.sample_data import generate  # noqa: E402
from pipelines.stages.validate import run_suite  # noqa: E402


def pandas_checks(frame: pd.DataFrame, data: DataParams, rules: ValidateParams) -> dict:
    """The contract's checks in plain pandas, producing what the GX run reports."""
    vf = validation_frame(frame, data)
    text, label = vf[data.text_column], vf[data.label_column]
    nn_text, nn_label = text.dropna(), label.dropna()
    row_masks = {
        "text_not_null": text.isna(),
        "text_not_blank": nn_text.str.contains(BLANK, regex=True).reindex(vf.index, fill_value=False),
        "text_length": (~nn_text.str.len().between(rules.text_length.min, rules.text_length.max))
        .reindex(vf.index, fill_value=False),
        "label_not_null": label.isna(),
        "label_well_formed": (~nn_label.str.match(LABEL_FORM)).reindex(vf.index, fill_value=False),
        "label_conflict": vf["_label_conflict"],
    }
    info = {f"pii_{k}": pii.detect(nn_text, k) for k in data.pii_detectors}
    out = {}
    for name, mask in {**row_masks, **info}.items():
        mask = mask.astype(bool)
        out[name] = {"count": int(mask.sum()), "examples": list(mask.index[mask][:5])}
    out["min_examples_per_label"] = float(vf["_label_count"].min()) >= rules.min_examples_per_label
    out["max_imbalance_ratio"] = float(vf["_imbalance"].max()) <= rules.max_imbalance_ratio
    out["duplicate_rate"] = float(vf["_duplicate"].mean()) <= rules.max_duplicate_rate
    bad = pd.Series(False, index=vf.index)
    for mask in row_masks.values():
        bad |= mask.astype(bool)
    out["quarantine_rows"] = int(bad.sum())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    data, rules = DataParams(), ValidateParams()

    t = time.perf_counter()
    frame = generate(args.rows, seed=11)
    frame["_source"], frame["_row"] = "bench.csv", range(1, len(frame) + 1)
    print(f"generated {len(frame)} rows in {time.perf_counter() - t:.1f}s", file=sys.stderr)
    run_suite(frame.head(1000), data, rules)  # warm-up: imports and GX registry, not data work

    t = time.perf_counter()
    outcome = run_suite(frame, data, rules)
    gx_s = time.perf_counter() - t
    t = time.perf_counter()
    baseline = pandas_checks(frame, data, rules)
    pd_s = time.perf_counter() - t

    gx_counts = {c.check.replace("_in_text", ""): c.unexpected_count for c in outcome.checks}
    for name in ("text_not_null", "text_not_blank", "label_well_formed", "pii_email", "pii_card"):
        assert gx_counts[name] == baseline[name]["count"], (name, gx_counts[name], baseline[name])
    print(f"GX suite: {outcome.status}, {len(outcome.checks)} checks in {gx_s:.2f}s; "
          f"pandas: {pd_s:.2f}s; PII rows found: "
          f"{ {k: v['count'] for k, v in baseline.items() if k.startswith('pii_')} }", file=sys.stderr)
    print(json.dumps({
        "rows": len(frame), "checks": len(outcome.checks),
        "gx_seconds": round(gx_s, 3), "pandas_seconds": round(pd_s, 3),
        "gx_rows_per_s": round(len(frame) / gx_s), "pandas_rows_per_s": round(len(frame) / pd_s),
        "ratio": round(gx_s / pd_s, 3),
        "target_met": bool(gx_s < 30 and gx_s / pd_s <= 3),
    }))


if __name__ == "__main__":
    main()
