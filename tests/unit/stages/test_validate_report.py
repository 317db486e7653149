"""validate's stderr report says what actually failed (issue 10: a wrong 'exceed the tolerance' message)."""
from __future__ import annotations

import pandas as pd
import pytest

from pipelines.core.config import ValidateParams
from pipelines.stages.validate import CheckResult, Outcome, _report


@pytest.mark.parametrize("quarantined, says", [
    (1, "within the quarantine tolerance of 1.00%, but dataset-level checks failed"),
    (5, "exceed the quarantine tolerance of 1.00%"),
])
def test_the_row_failure_line_says_whether_the_tolerance_was_exceeded(capsys, tmp_path, quarantined, says):
    checks = [CheckResult("min_examples_per_label", "expect_column_min_to_be_between", None, "dataset", False),
              CheckResult("text_not_blank", "expect_column_values_to_not_match_regex", "text", "row", False,
                          unexpected_count=quarantined)]
    outcome = Outcome("failed", 200, checks, pd.DataFrame({"text": [""] * quarantined}))
    _report(outcome, ValidateParams(quarantine_tolerance=0.01), tmp_path, tmp_path / "q.jsonl")
    err = capsys.readouterr().err
    assert says in err
    if quarantined == 1:
        assert "exceed" not in err
