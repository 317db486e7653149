import pytest

from pipelines.core.errors import CheckFailed, ConfigError
from pipelines.orchestration.gitops import TransientError
from pipelines.orchestration.runspace import stage_error

# (what the stage task printed last, the outcome: deterministic errors fail at once, the rest retry)
CASES = [
    (["error: validation failed: 3 checks", "ERROR: failed to reproduce 'validate': exited with 1"], CheckFailed),
    (["error: params.yaml: unknown key 'x'", "ERROR: failed to reproduce 'train': exited with 2"], ConfigError),
    (["ERROR: dvc repro: failed to reproduce 'evaluate': Parameters 'data.response_format' are missing from "
      "'params.yaml'."], ConfigError),
    (["ERROR: dvc push: [Errno 28] No space left on device"], TransientError),
    (["ERROR: failed to reproduce 'train': exited with -9"], TransientError),
]


@pytest.mark.parametrize("tail, kind", CASES)
def test_a_failed_stage_task_is_retried_only_when_a_retry_can_help(tail, kind):
    err = stage_error("evaluate", 1, tail)
    assert type(err) is kind and str(err).startswith("evaluate: ") and "\n" not in str(err)
