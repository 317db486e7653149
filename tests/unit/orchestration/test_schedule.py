"""A weekly slot missed while the platform was down is skipped, not run on start-up, unless asked."""
from datetime import datetime, timedelta, timezone

import pytest

from pipelines.orchestration.schedule import missed_slot

SLOT = datetime(2026, 11, 30, 3, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize("run_type, late_h, policy, skipped", [
    ("scheduled", 0.1, "skip", False),  # the scheduler ran it on time
    ("scheduled", 5.9, "skip", False),  # back within the grace: run
    ("scheduled", 7 * 24, "skip", True),  # down for a week: the next slot retrains
    ("scheduled", 7 * 24, "run", False),  # asked to run missed slots
    ("manual", 7 * 24, "skip", False),  # the trigger form, an asset event, a backfill: never skipped
    ("asset_triggered", 7 * 24, "skip", False),
    ("backfill", 7 * 24, "skip", False),
])
def test_a_missed_weekly_slot(run_type, late_h, policy, skipped):
    said = missed_slot(run_type, SLOT, SLOT + timedelta(hours=late_h), policy, 6.0)
    assert (said is not None) is skipped
    if skipped:
        assert "2026-11-30T03:00+00:00 was missed by 168.0 h" in said and "the next slot retrains" in said
