"""Promotion hook for a running vLLM server (the production engine for causal LMs on GPUs).

Inputs: the vLLM base URL (started with `--enable-lora` and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True,
see docker/vllm/), the registry model name, the promoted version and the adapter directory as the
vLLM host sees it. Output: the adapter loaded as `<model>-v<N>` through `/v1/load_lora_adapter`,
the stable served name `<model>` pointed at it (in place where the server supports
`load_inplace`, otherwise unload + load), and the previous versioned adapter unloaded. Any refusal
raises `CheckFailed` with vLLM's answer; the previously served adapter stays in place.
"""
from __future__ import annotations

import sys

from pipelines.core.errors import CheckFailed


def _post(client, url: str, body: dict) -> None:
    r = client.post(url, json=body)
    if r.status_code >= 400:
        raise CheckFailed(f"vLLM refused {url.rsplit('/', 1)[-1]} for {body.get('lora_name')}: "
                          f"{r.status_code} {r.text[:200]}")


def served_adapters(client, base_url: str) -> set[str]:
    r = client.get(f"{base_url}/v1/models")
    r.raise_for_status()
    return {m["id"] for m in r.json().get("data", [])}


def promote_to_vllm(base_url: str, model: str, version: int, adapter_path: str, api_key: str | None = None,
                    previous: int | None = None, timeout: float = 120.0) -> str:
    """Load version N and point the served name at it; returns the served name."""
    import httpx

    base_url = base_url.rstrip("/")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    versioned = f"{model}-v{version}"
    with httpx.Client(timeout=timeout, headers=headers) as client:
        if versioned not in served_adapters(client, base_url):
            _post(client, f"{base_url}/v1/load_lora_adapter", {"lora_name": versioned, "lora_path": adapter_path})
        r = client.post(f"{base_url}/v1/load_lora_adapter",
                        json={"lora_name": model, "lora_path": adapter_path, "load_inplace": True})
        if r.status_code >= 400:  # older vLLM: no in-place reload; a short window without `model`
            print(f"note: vLLM has no in-place adapter reload ({r.status_code}); reloading '{model}'", file=sys.stderr)
            if model in served_adapters(client, base_url):
                _post(client, f"{base_url}/v1/unload_lora_adapter", {"lora_name": model})
            _post(client, f"{base_url}/v1/load_lora_adapter", {"lora_name": model, "lora_path": adapter_path})
        if model not in served_adapters(client, base_url):
            raise CheckFailed(f"vLLM does not list '{model}' after loading {versioned}")
        old = f"{model}-v{previous}" if previous is not None else None
        if old and old != versioned and old in served_adapters(client, base_url):
            _post(client, f"{base_url}/v1/unload_lora_adapter", {"lora_name": old})
    return model
