"""What a scheduled lifecycle run does when its slot was missed.

Airflow's CronTriggerTimetable with catchup off still creates a run for the most recent slot when the
scheduler starts after it (a platform down for a week would retrain every model at once on start-up).
Inputs: the run's type and slot (its logical date), now, and the model's `lifecycle.missed_slot` and
`missed_slot_grace_h`. Output: why the run is skipped (the `snapshot` task raises a skip with it and
nothing is trained), or None. Runs from the trigger form, an asset event or a backfill are never skipped.
"""
from __future__ import annotations

from datetime import datetime, timedelta


def missed_slot(run_type: str, slot: datetime | None, now: datetime, policy: str, grace_h: float) -> str | None:
    if run_type != "scheduled" or slot is None or policy == "run":
        return None
    late = now - slot
    if late <= timedelta(hours=grace_h):
        return None
    hours = late.total_seconds() / 3600
    return (f"the weekly slot of {slot.isoformat(timespec='minutes')} was missed by {hours:.1f} h "
            f"(over lifecycle.missed_slot_grace_h {grace_h:g} h): skipped, the next slot retrains "
            "(lifecycle.missed_slot: run to run missed slots; or trigger a run)")
