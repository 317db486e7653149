"""Zero-downtime swaps on a real server on loopback under steady load.

Clients hammer /v1/classify while the champion is promoted twice and rolled back once. Every
request must succeed, and each client must see the version change exactly once per alias move,
in order, never back and forth.
"""
from __future__ import annotations

import subprocess
import sys
import threading
import time

import httpx
import pytest
import yaml

from pipelines.core.errors import CheckFailed
from pipelines.registry import store as registry
from pipelines.serving.engine import wait_ready
from tests.conftest import cli_env
from tests.serving_support import build_registry, free_port


@pytest.fixture(scope="module")
def reg(tmp_path_factory):
    return build_registry(tmp_path_factory.mktemp("swap"), "classification", versions=3)


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_swaps_under_load_fail_no_request(reg, tmp_path):
    port = free_port()
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({
        "registry": {"root": str(reg["root"] / "registry")}, "serve": {"poll_seconds": 0.5, "port": port}}))
    server = subprocess.Popen([sys.executable, "-m", "pipelines", "serve"], cwd=tmp_path, env=cli_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, 120, proc=server)
        stop = threading.Event()
        seen: list[list[int]] = [[] for _ in range(4)]
        failures: list[str] = []

        def client(i: int) -> None:
            with httpx.Client(timeout=30) as c:
                while not stop.is_set():
                    try:
                        r = c.post(f"{url}/v1/classify", json={"texts": [f"where is my card {i}"]})
                        if r.status_code != 200:
                            failures.append(f"{r.status_code} {r.text[:100]}")
                            continue
                        v = int(r.headers["X-Model-Version"])
                        assert r.json()["model_version"] == v
                        if not seen[i] or seen[i][-1] != v:
                            seen[i].append(v)
                    except Exception as err:  # a refused or dropped connection is a failure
                        failures.append(repr(err))

        threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        store = reg["store"]
        moves = [lambda: registry.promote(store, reg["model"], *reg["candidates"][1], None, reason="v2"),
                 lambda: registry.promote(store, reg["model"], *reg["candidates"][2], None, reason="v3"),
                 lambda: registry.move_alias(store, reg["model"], "champion", None, reason="rollback")]
        for move, expected in zip(moves, (2, 3, 2)):
            time.sleep(1.0)
            move()
            wait_for(lambda: all(s and s[-1] == expected for s in seen), 60, f"all clients on v{expected}")
        time.sleep(1.0)
        stop.set()
        for t in threads:
            t.join(timeout=30)
        assert failures == []
        for s in seen:
            assert s == [1, 2, 3, 2], seen
        metrics = httpx.get(f"{url}/metrics").text
        assert "pipelines_model_load_failures_total 0.0" in metrics
    finally:
        server.terminate()
        server.wait(timeout=30)


def _force_alias(store, version: int) -> None:
    """Move champion without the registry's verification (as a registry written by another tool could)."""
    with registry._locked(store):
        entries = registry.read_ledger(store)
        registry._append(store, entries, {"action": "rollback", "version": version, "registered": None,
                                          "aliases": {**registry.aliases(entries), "champion": version},
                                          "by": "test", "reason": "forced"})


def test_a_version_that_fails_to_load_is_skipped_then_retried_once_repaired(reg, tmp_path):
    port = free_port()
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({
        "registry": {"root": str(reg["root"] / "registry")}, "serve": {"poll_seconds": 0.3, "port": port}}))
    store = reg["store"]
    current = registry.aliases(registry.read_ledger(store))["champion"]
    server = subprocess.Popen([sys.executable, "-m", "pipelines", "serve"], cwd=tmp_path, env=cli_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, 120, proc=server)
        other = 1 if current != 1 else 3
        weights = registry.version_dir(store, other) / "adapter" / "adapter_model.safetensors"
        original = weights.read_bytes()
        weights.write_bytes(b"corrupted")  # the version now cannot load
        try:
            with pytest.raises(CheckFailed, match="fails verification"):  # the registry refuses it ...
                registry.move_alias(store, reg["model"], "champion", other, reason="bad version")
            _force_alias(store, other)  # ... and the server too, when the alias is moved around the registry
            wait_for(lambda: "pipelines_model_load_failures_total 1.0" in httpx.get(f"{url}/metrics").text, 60,
                     "load failure reported")
            r = httpx.post(f"{url}/v1/classify", json={"texts": ["card"]})
            assert r.status_code == 200 and r.headers["X-Model-Version"] == str(current)
        finally:
            weights.write_bytes(original)
        # Repaired, the alias moves away and back: the version is tried again and served.
        registry.move_alias(store, reg["model"], "champion", current, reason="restore")
        registry.move_alias(store, reg["model"], "champion", other, reason="repaired")
        wait_for(lambda: httpx.get(f"{url}/readyz").headers.get("X-Model-Version") == str(other), 60,
                 "repaired version served")
        registry.move_alias(store, reg["model"], "champion", current, reason="restore")
    finally:
        server.terminate()
        server.wait(timeout=30)
