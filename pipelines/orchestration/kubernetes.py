"""The `train` task as a Kubernetes pod that requests a GPU: the contract between the lifecycle DAG
(KubernetesPodOperator, when PIPELINES_TRAIN_POD_IMAGE is set) and the image `docker/gpu-worker.Dockerfile`.

Inputs: the image, the run pointer (a Jinja template that pulls the previous task's XCom), the
shared locations (git remote, DVC remote) and the pod's resources. Outputs: `train_pod_spec` returns
the arguments the KubernetesPodOperator is built with, as plain data (so a unit test can check the
contract without a cluster): the command runs `pipelines step train --run <pointer>` and writes its
result where the operator's XCom sidecar reads it; the DVC cache and the workspace live on the pod's
own disk (emptyDir) and the shared state is reached only by URL.
"""
from __future__ import annotations

from typing import Any

XCOM_FILE = "/airflow/xcom/return.json"  # where KubernetesPodOperator's sidecar reads the return value


def train_pod_spec(image: str, run_template: str, git_remote: str, dvc_remote: str | None, gpus: int = 1,
                   memory: str = "48Gi", cpu: str = "8", namespace: str = "airflow",
                   node_selector: dict[str, str] | None = None, secret_env: str | None = "pipelines-remotes") -> dict[str, Any]:
    """The KubernetesPodOperator keyword arguments for `train` (resources as plain dicts)."""
    env = {"PIPELINES_GIT_REMOTE": git_remote, "PIPELINES_WORKER_CACHE": "/work/dvc-cache",
           "PIPELINES_SCRATCH": "/work/scratch", "PIPELINES_WORKER_NAME": "k8s-train-pod", "HF_HUB_OFFLINE": "1"}
    if dvc_remote:
        env["PIPELINES_DVC_REMOTE"] = dvc_remote
    return {
        "task_id": "train", "name": "train", "namespace": namespace, "image": image,
        "cmds": ["pipelines"], "arguments": ["step", "train", "--run", run_template, "--xcom-file", XCOM_FILE],
        "env_vars": env,
        # credentials for the git and DVC remotes (S3 keys, a git token) come from a Secret, never the DAG
        "env_from": [{"secretRef": {"name": secret_env}}] if secret_env else [],
        "container_resources": {"requests": {"cpu": cpu, "memory": memory, "nvidia.com/gpu": str(gpus)},
                                "limits": {"memory": memory, "nvidia.com/gpu": str(gpus)}},
        "node_selector": node_selector or {"nvidia.com/gpu.present": "true"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "volumes": [{"name": "work", "emptyDir": {"sizeLimit": "200Gi"}}],
        "volume_mounts": [{"name": "work", "mountPath": "/work"}],
        "do_xcom_push": True, "get_logs": True, "on_finish_action": "delete_succeeded_pod",
    }


def build_operator(spec: dict[str, Any]):
    """The KubernetesPodOperator for `spec` (needs apache-airflow-providers-cncf-kubernetes)."""
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from kubernetes.client import models as k8s

    spec = dict(spec)
    resources = spec.pop("container_resources")
    volumes = [k8s.V1Volume(name=v["name"], empty_dir=k8s.V1EmptyDirVolumeSource(size_limit=v["emptyDir"]["sizeLimit"]))
               for v in spec.pop("volumes")]
    mounts = [k8s.V1VolumeMount(name=m["name"], mount_path=m["mountPath"]) for m in spec.pop("volume_mounts")]
    env_from = [k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=e["secretRef"]["name"]))
                for e in spec.pop("env_from")]
    tolerations = [k8s.V1Toleration(**t) for t in spec.pop("tolerations")]
    return KubernetesPodOperator(container_resources=k8s.V1ResourceRequirements(**resources), volumes=volumes,
                                 volume_mounts=mounts, env_from=env_from, tolerations=tolerations, **spec)
