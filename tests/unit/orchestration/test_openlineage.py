"""What each lifecycle task reports to OpenLineage, built from the run's dvc.lock and evidence: code
deps left out, verdicts as facets, names that connect one task's output to the next one's input."""
from __future__ import annotations

import json

import pytest
import yaml

from pipelines.core.config import Params
from pipelines.orchestration import openlineage as ol

FOLDER = "projects/text-classifier"
REMOTE = "/srv/git/platform.git"
LOCK = {"schema": "2.0", "stages": {
    "validate": {"cmd": "pipelines validate",
                 "deps": [{"path": "data/raw", "md5": "raw0.dir", "nfiles": 2},
                          {"path": "../../pipelines/stages/validate.py", "md5": "code"}],
                 "outs": [{"path": "reports/validate/result.json", "md5": "res1"}]},
    "prepare": {"deps": [{"path": "data/raw", "md5": "raw0.dir", "nfiles": 2},
                         {"path": "reports/validate/result.json", "md5": "res1"}],
                "outs": [{"path": "data/prepared", "md5": "prep2.dir", "nfiles": 3}]},
    "train": {"deps": [{"path": "data/prepared", "md5": "prep2.dir", "nfiles": 3}],
              "outs": [{"path": "models/candidate", "md5": "cand3.dir", "nfiles": 4}]},
    "gate": {"deps": [{"path": "reports/evaluate/metrics.json", "md5": "met4"}],
             "outs": [{"path": "reports/gate/decision.json", "md5": "dec5"}]}}}


@pytest.fixture
def project(tmp_path):
    params = Params()
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(LOCK))
    result = tmp_path / params.validate_.report_dir / "result.json"
    result.parent.mkdir(parents=True)
    result.write_text(json.dumps({"status": "passed", "success": True, "rows": 600, "quarantined_rows": 0,
                                  "failed_checks": [], "gx_version": "1.x"}))
    decision = tmp_path / params.gate.decision_path
    decision.parent.mkdir(parents=True)
    decision.write_text(json.dumps({"passed": False, "candidate_hash": "c" * 64, "champion_version": 1, "rules": [
        {"rule": "min_accuracy", "passed": False, "detail": "0.61 < 0.7"}, {"rule": "max_p95", "passed": True}]}))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "raw.dvc").write_text(yaml.safe_dump({"outs": [{"path": "raw", "md5": "raw0.dir",
                                                                          "nfiles": 2}]}))
    return params, tmp_path


def names(datasets):
    return [d["name"] for d in datasets]


@pytest.mark.parametrize("stage, inputs, outputs", [
    ("validate", ["data/raw"], ["reports/validate/result.json"]),  # the validator's code is not a dataset
    ("prepare", ["data/raw", "reports/validate/result.json"], ["data/prepared"]),
    ("train", ["data/prepared"], ["models/candidate"]),
    ("gate", ["reports/evaluate/metrics.json"], ["reports/gate/decision.json"]),
    ("evaluate", [], []),  # not in this lock: nothing claimed
])
def test_a_stage_reports_its_data_deps_and_outs(project, stage, inputs, outputs):
    params, root = project
    io = ol.stage_io(params, root, FOLDER, REMOTE, stage)
    assert names(io["inputs"]) == [f"{FOLDER}/{p}" for p in inputs]
    assert names(io["outputs"]) == [f"{FOLDER}/{p}" for p in outputs]
    assert {d["namespace"] for d in io["inputs"] + io["outputs"]} <= {"file:///srv/git/platform.git"}


def test_one_stage_output_is_the_next_stage_input_at_the_same_version(project):
    params, root = project
    made = ol.stage_io(params, root, FOLDER, REMOTE, "prepare")["outputs"][0]
    read = ol.stage_io(params, root, FOLDER, REMOTE, "train")["inputs"][0]
    assert made == read and made["facets"]["version"] == {"datasetVersion": "prep2.dir"}
    assert made["facets"]["mlops_contentHash"] == {"algorithm": "md5 (DVC)", "hash": "prep2.dir", "files": 3}
    snap = ol.snapshot_io(params, root, FOLDER, REMOTE)["outputs"][0]  # the drop the run snapshotted ...
    assert snap == ol.stage_io(params, root, FOLDER, REMOTE, "validate")["inputs"][0]  # ... is what GX read


def test_verdicts_travel_as_facets(project):
    params, root = project
    gx = ol.stage_io(params, root, FOLDER, REMOTE, "validate")["outputs"][0]["facets"]["mlops_gxValidation"]
    assert gx["status"] == "passed" and gx["success"] is True and gx["rows"] == 600
    gate = ol.stage_io(params, root, FOLDER, REMOTE, "gate")["outputs"][0]["facets"]["mlops_gateDecision"]
    assert gate == {"passed": False, "candidate_hash": "c" * 64, "summary": "1/2 rules",
                    "reasons": ["min_accuracy: 0.61 < 0.7"], "champion_version": 1}


def test_promotion_reads_the_candidate_and_decision_and_writes_the_version_and_alias(project):
    params, root = project
    manifest = {"model": "text-classifier", "version": 2, "candidate_hash": "c" * 64, "adapter_sha256": "a" * 64,
                "base_model": "minilm", "base_hash": "b" * 64, "data_version": "prep2.dir"}
    io = ol.promote_io(params, root, FOLDER, REMOTE, "s3://models/registry", manifest, "m" * 64, "KEY")
    assert names(io["inputs"]) == [f"{FOLDER}/models/candidate", f"{FOLDER}/reports/gate/decision.json"]
    version, served = io["outputs"]
    assert (version["namespace"], version["name"]) == ("s3://models/registry", "text-classifier/v0002")
    assert version["facets"]["mlops_registryVersion"]["manifest_sha256"] == "m" * 64
    assert version["facets"]["mlops_registryVersion"]["signed_by"] == "KEY"
    assert served["name"] == "text-classifier@champion" and served["facets"]["mlops_alias"]["version"] == 2


def test_a_facet_with_a_field_it_does_not_declare_is_refused():
    with pytest.raises(ValueError, match="facet mlops_alias: unknown fields"):
        ol.dataset("ns", "n", mlops_alias={"model": "m", "colour": "blue"})
