"""What differs between task types, declared once per task and looked up by name.

Inputs: `data.task` from params. Outputs: the `TaskSpec` of that task: how its rows look (labelled
or generative), which transformers/peft classes train it, the gate's floor rules and paired
comparison, and the serving routes that answer it. Stages ask the spec, never compare task names,
so a new task is a module in this package with one `register(...)` line (the way peft registers a
tuner), plus its encode/metrics where they are new.
"""
from __future__ import annotations

from dataclasses import dataclass

Floor = tuple[str, str, str]  # (gate params key, metric key, "min" | "max")


@dataclass(frozen=True)
class TaskSpec:
    name: str
    labelled: bool  # each row carries one class label: label map, stratified splits, per-class checks
    auto_model: str  # the transformers Auto class of the base model
    peft_task_type: str  # peft.TaskType member
    gate_floors: tuple[Floor, ...]  # absolute rules on the candidate's metrics
    paired_score: str  # per-example column that the gate compares candidate vs champion on
    paired_test: str  # "mcnemar" (0/1 outcomes) or "bootstrap" (continuous scores)
    routes: tuple[str, ...]  # the serving endpoints that answer this task
    headline: str  # the metric a person reads first
    lora_dropout: float = 0.05  # train.lora.dropout when params leave it unset
    compares_base: bool = False  # evaluate also scores the base model, the gate requires beating it

    @property
    def generative(self) -> bool:
        return not self.labelled


_REGISTRY: dict[str, TaskSpec] = {}


def register(spec: TaskSpec) -> TaskSpec:
    if spec.name in _REGISTRY and _REGISTRY[spec.name] != spec:
        raise ValueError(f"task {spec.name!r} is already registered differently")
    _REGISTRY[spec.name] = spec
    return spec


def names() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


def task_spec(name: str) -> TaskSpec:
    """The spec of a registered task (params are validated against `names()` when they load, so an
    unknown name here is a programming error)."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(names())}") from None
