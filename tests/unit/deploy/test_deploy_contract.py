"""The deployment artefacts agree with the code (no cluster or Docker engine runs here): the train pod
the DAG would build (image, command, env, GPU request, volumes), the KubernetesExecutor pod template,
the Helm values for CeleryExecutor and KubernetesExecutor, and one Dockerfile target per role whose
queues are the ones the DAG routes to."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import yaml

from pipelines.orchestration.kubernetes import XCOM_FILE, train_pod_spec
from tests.conftest import ROOT, cli_env

DOCKER = ROOT / "docker"
SHARED_ENV = {"PIPELINES_GIT_REMOTE", "PIPELINES_DVC_REMOTE"}


def test_the_train_pod_requests_a_gpu_and_runs_the_step_with_the_run_pointer():
    spec = train_pod_spec("registry.example.com/llmops/gpu-worker:abc", "{{ ti.xcom_pull(task_ids='prepare') | tojson }}",
                          git_remote="https://git.example.com/ml/platform.git", dvc_remote="s3://ml-platform/dvc")
    assert spec["task_id"] == "train" and spec["image"].endswith("gpu-worker:abc")
    assert spec["cmds"] + spec["arguments"][:2] == ["pipelines", "step", "train"]
    assert spec["arguments"][spec["arguments"].index("--xcom-file") + 1] == XCOM_FILE and spec["do_xcom_push"]
    assert "xcom_pull(task_ids='prepare')" in spec["arguments"][spec["arguments"].index("--run") + 1]
    assert spec["container_resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert spec["env_vars"]["PIPELINES_GIT_REMOTE"].startswith("https://")
    assert spec["env_vars"]["PIPELINES_DVC_REMOTE"] == "s3://ml-platform/dvc"
    mounts = {m["mountPath"] for m in spec["volume_mounts"]}
    assert {"/work"} == mounts and spec["env_vars"]["PIPELINES_WORKER_CACHE"].startswith("/work/")
    assert [v["emptyDir"] for v in spec["volumes"]] and spec["tolerations"][0]["key"] == "nvidia.com/gpu"


def test_the_executor_pod_template_checks_out_and_shares_nothing_on_disk():
    pod = yaml.safe_load((DOCKER / "kubernetes" / "pod_template.yaml").read_text())
    base = pod["spec"]["containers"][0]
    assert base["name"] == "base" and "llmops/worker" in base["image"]
    assert SHARED_ENV <= {e["name"] for e in base["env"]}
    assert all("emptyDir" in v for v in pod["spec"]["volumes"])  # no persistent volume: no shared disk


@pytest.mark.parametrize("name, executor", [("values-celery.yaml", "CeleryExecutor"),
                                            ("values-kubernetes.yaml", "KubernetesExecutor")])
def test_helm_values(name, executor):
    values = yaml.safe_load((DOCKER / "helm" / name).read_text())
    assert values["executor"] == executor
    assert SHARED_ENV <= {e["name"] for e in values["env"]}
    assert all(e["value"].startswith(("s3://", "https://", "/work", "registry.")) for e in values["env"])
    bundles = json.loads(values["config"]["dag_processor"]["dag_bundle_config_list"])
    assert bundles[0]["classpath"].endswith("GitDagBundle") and bundles[0]["kwargs"]["subdir"] == "dags"
    logging = values["config"]["logging"]
    assert logging["remote_logging"] == "True" and logging["remote_base_log_folder"].startswith("s3://")
    if executor == "CeleryExecutor":
        gpu = values["workers"]["celery"]["sets"][0]
        assert "--queues gpu" in gpu["args"][-1] and gpu["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert "--queues default" in values["workers"]["args"][-1]
    else:
        assert any(e["name"] == "PIPELINES_TRAIN_POD_IMAGE" for e in values["env"])


def test_one_dockerfile_target_per_role_serving_the_dags_queues():
    text = (DOCKER / "Dockerfile").read_text()
    targets = re.findall(r"^FROM \S+ AS (\S+)$", text, flags=re.M)
    assert targets == ["base", "airflow", "worker", "gpu-worker", "serve"]
    assert '"--queues", "gpu"' in text and '"--queues", "default"' in text
    assert "COPY projects" not in text and "COPY dags" not in text  # DAGs and model folders come from git


@pytest.mark.parametrize("args, env, message", [
    (["--run", "not json"], {"PIPELINES_GIT_REMOTE": "/x"}, "--run: not a run pointer"),
    (["--run", "{}"], {"PIPELINES_GIT_REMOTE": "/x"}, "--run: not a run pointer"),
    (["--run", json.dumps({"model": "m", "project": "projects/m", "run_id": "r", "ref": "refs/runs/m/r",
                           "commit": "0" * 40})], {"PIPELINES_GIT_REMOTE": ""}, "PIPELINES_GIT_REMOTE is not set"),
])
def test_the_step_command_refuses_bad_input_in_one_line(args, env, message):
    proc = subprocess.run([sys.executable, "-m", "pipelines", "step", "train", *args], capture_output=True, text=True,
                          env={**cli_env(), **env}, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith(f"error: {message}") and proc.stderr.count("\n") == 1
