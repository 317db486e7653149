"""The OpenLineage provider's extractor for the lifecycle's tasks (`[openlineage] extractors`).

Each lifecycle task returns what it read and wrote (`lineage_io`, built by
`pipelines.orchestration.openlineage` from the run's dvc.lock and the registry); on COMPLETE this
extractor reads that return value and gives the provider the datasets and facets. START carries
none (nothing is known before the task ran). A task that returns no `lineage_io` (another DAG's
@task) gets nothing here, so the provider falls back to hook lineage and inlets/outlets as usual.

Nothing here is imported unless the provider is installed and OpenLineage is configured; this file
is in `.airflowignore`, not a DAG file.
"""
from __future__ import annotations

from functools import cache

import attr
from airflow.providers.openlineage.extractors.base import BaseExtractor, OperatorLineage
from openlineage.client.event_v2 import InputDataset, OutputDataset
from openlineage.client.facet_v2 import DatasetFacet, RunFacet, dataset_version_dataset

from pipelines.orchestration.openlineage import FACETS

SCHEMA = "urn:llmops-pipelines:openlineage:facet:{name}"  # the fields: pipelines.orchestration.openlineage.FACETS
RUN_FIELDS = ("model", "project", "run_id", "ref", "commit")


@cache
def facet_class(name: str, fields: tuple[str, ...], base: type = DatasetFacet) -> type:
    """An attrs facet class for a custom facet (its fields all optional, keyword-only)."""
    cls = attr.make_class(name, {f: attr.field(default=None, kw_only=True) for f in fields}, bases=(base,))
    cls._get_schema = staticmethod(lambda: SCHEMA.format(name=name))
    return cls


def _facets(given: dict) -> dict:
    out = {}
    for key, fields in given.items():
        if key == "version":
            out[key] = dataset_version_dataset.DatasetVersionDatasetFacet(datasetVersion=str(fields["datasetVersion"]))
        elif key in FACETS:
            out[key] = facet_class(key, FACETS[key])(**fields)
    return out


class LifecycleExtractor(BaseExtractor):
    @classmethod
    def get_operator_classnames(cls) -> list[str]:
        return ["_PythonDecoratedOperator", "_BranchPythonDecoratedOperator"]

    def _execute_extraction(self) -> OperatorLineage | None:
        return None  # START: what the task reads and writes is known when it completes

    def extract_on_complete(self, task_instance) -> OperatorLineage | None:
        value = task_instance.xcom_pull(task_ids=self.operator.task_id)
        io = value.get("lineage_io") if isinstance(value, dict) else None
        if not isinstance(io, dict):
            return None
        run = {k: value.get(k) for k in RUN_FIELDS}
        return OperatorLineage(
            inputs=[InputDataset(namespace=d["namespace"], name=d["name"], facets=_facets(d["facets"]))
                    for d in io.get("inputs", [])],
            outputs=[OutputDataset(namespace=d["namespace"], name=d["name"], facets=_facets(d["facets"]))
                     for d in io.get("outputs", [])],
            run_facets={"mlops_run": facet_class("mlops_run", RUN_FIELDS, RunFacet)(**run)})
