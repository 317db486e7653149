"""Task types of the platform: each module registers one `TaskSpec` (see `spec.py`)."""
from pipelines.tasks import causal_lm, classification  # noqa: F401  (importing registers them)
from pipelines.tasks.spec import TaskSpec, names, register, task_spec

__all__ = ["TaskSpec", "names", "register", "task_spec"]
