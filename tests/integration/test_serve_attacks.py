"""Serving under hostile input and misconfiguration (issue 10's catalogue, serving half), and a
property-based fuzz of the API against its own OpenAPI document."""
from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.core.config import parse_params
from pipelines.core.errors import ConfigError
from pipelines.core.hashing import sha256_file
from pipelines.serving.app import create_app
from pipelines.serving.engine import server_config
from tests.conftest import cli_env
from tests.serving_support import build_registry, free_port

pytestmark = pytest.mark.integration
KEY = "k3y-for-tests"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def reg(tmp_path_factory):
    return build_registry(tmp_path_factory.mktemp("attacks"), "classification", versions=1)


def params_for(reg, **serve):
    return parse_params({"registry": {"root": str(reg["root"] / "registry"), "model_name": reg["model"]},
                         "serve": {"poll_seconds": 0.2, **serve}})


@pytest.fixture
def client(reg, monkeypatch):
    monkeypatch.setenv("PIPELINES_API_KEYS", KEY)
    with TestClient(create_app(params_for(reg, max_body_bytes=4096, max_input_tokens=8), poll=False)) as c:
        yield c


def _is_error_shape(response) -> bool:
    body = response.json()
    return (set(body) == {"error"} and isinstance(body["error"].get("message"), str)
            and isinstance(body["error"].get("type"), str) and body["error"].get("code") == response.status_code)


# (id, method, path, headers, body, expected status)
REQUEST_ROWS = [
    ("lone-surrogate-text", "post", "/v1/classify", AUTH, b'{"texts": ["ok \\ud800 there"]}', 422),
    ("lone-surrogate-prompt", "post", "/v1/completions", AUTH, b'{"prompt": "\\udfff"}', 422),
    ("lone-surrogate-chat", "post", "/v1/chat/completions", AUTH,
     b'{"messages": [{"role": "user", "content": "\\ud83d"}]}', 422),
    ("no-key", "post", "/v1/classify", {}, b'{"texts": ["a"]}', 401),
    ("unknown-route", "get", "/v1/nothing-here", AUTH, None, 404),
    ("wrong-method", "get", "/v1/classify", AUTH, None, 405),
    ("bad-field", "post", "/v1/classify", AUTH, b'{"texts": "not a list"}', 422),
    ("over-token-limit", "post", "/v1/classify", AUTH, b'{"texts": ["one two three four five six seven eight nine ten"]}',
     413),
    ("wrong-task-route", "post", "/v1/completions", AUTH, b'{"prompt": "hi"}', 400),
]


@pytest.mark.parametrize("method, path, headers, body, status", [r[1:] for r in REQUEST_ROWS],
                         ids=[r[0] for r in REQUEST_ROWS])
def test_hostile_request_gets_a_4xx_in_the_one_error_shape(client, method, path, headers, body, status):
    r = client.request(method.upper(), path, content=body, headers={**headers, "content-type": "application/json"})
    assert r.status_code == status, r.text
    assert _is_error_shape(r), r.text
    assert client.get("/healthz").status_code == 200


def test_an_oversized_chunked_body_is_413(client):
    def chunks():
        for _ in range(10):
            yield b"x" * 1000
    r = client.post("/v1/classify", content=chunks(), headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 413 and _is_error_shape(r)


def test_random_paths_do_not_grow_metrics(client):
    for i in range(300):
        client.get(f"/v1/probe-{i}", headers=AUTH if i % 2 else {})
    text = client.get("/metrics", headers=AUTH).text
    assert "probe-" not in text and 'path="other"' in text
    assert len(text) < 50_000


def test_over_limit_requests_never_pass_under_concurrency(reg, monkeypatch):
    """Over-limit texts counted on their own thread and tokenizer copy, while real forwards truncate."""
    monkeypatch.delenv("PIPELINES_API_KEYS", raising=False)
    # The model truncates to max_length 32 tokens: a count that raced with a forward pass's truncation
    # would see <= 32 tokens, under the limit of 40, and let a 100-token text through.
    app = create_app(params_for(reg, max_input_tokens=40), poll=False)
    long_text = " ".join(["word"] * 100)

    async def run():
        transport = httpx.ASGITransport(app=app)
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                over = [c.post("/v1/classify", json={"texts": [long_text]}) for _ in range(150)]
                normal = [c.post("/v1/classify", json={"texts": ["my card has not arrived " * 6] * 16})
                          for _ in range(40)]
                return await asyncio.gather(*over), await asyncio.gather(*normal)

    over, normal = asyncio.run(run())
    assert [r.status_code for r in over] == [413] * 150
    assert [r.status_code for r in normal] == [200] * 40


def test_a_missing_keys_file_refuses_to_start(reg, tmp_path):
    with pytest.raises(ConfigError, match="nope.keys"):
        create_app(params_for(reg, api_keys_file=str(tmp_path / "nope.keys")), poll=False)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({
        "registry": {"root": str(reg["root"] / "registry"), "model_name": reg["model"]},
        "serve": {"api_keys_file": str(tmp_path / "nope.keys"), "port": free_port()}}))
    proc = subprocess.run([sys.executable, "-m", "pipelines", "serve"], cwd=tmp_path, env=cli_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "nope.keys" in proc.stderr.strip().splitlines()[-1], proc.stderr


def test_no_keys_on_a_public_address_is_refused_and_loopback_says_auth_is_off(reg, tmp_path):
    env = {k: v for k, v in cli_env().items() if k != "PIPELINES_API_KEYS"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({
        "registry": {"root": str(reg["root"] / "registry"), "model_name": reg["model"]}}))
    proc = subprocess.run([sys.executable, "-m", "pipelines", "serve", "--host", "0.0.0.0", "--port", "1"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "without API keys" in proc.stderr, proc.stderr
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "pipelines", "serve", "--port", str(port)], cwd=tmp_path,
                              env=env, stderr=subprocess.PIPE, text=True)
    try:
        line = server.stderr.readline()
        assert line.startswith("authentication: OFF"), line
    finally:
        server.terminate()
        server.wait(timeout=30)


def _serve_thread(app, sp):
    import threading

    import uvicorn

    port = free_port()
    server = uvicorn.Server(server_config(app, sp, "127.0.0.1", port))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.02)
    return server, port


def test_slow_clients_are_timed_out_and_connections_bounded(reg, monkeypatch):
    monkeypatch.delenv("PIPELINES_API_KEYS", raising=False)
    params = params_for(reg, header_timeout_s=1.0, max_connections=40)
    server, port = _serve_thread(create_app(params, poll=False), params.serve)
    socks = []
    try:
        for _ in range(120):  # half-open: connect, send part of a request line, then nothing
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\n")
            socks.append(s)
        time.sleep(3.0)
        closed = 0
        for s in socks:
            s.settimeout(2)
            try:
                closed += s.recv(1) == b""
            except (ConnectionResetError, TimeoutError, socket.timeout):
                closed += isinstance(sys.exc_info()[1], ConnectionResetError)
        assert closed == len(socks)
        ok = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10)  # the server still answers
        assert ok.status_code == 200
    finally:
        for s in socks:
            s.close()
        server.should_exit = True


def test_weights_and_manifest_edited_together_are_never_served(reg, tmp_path, monkeypatch):
    """The manifest must match the ledger's manifest_sha256, not only the files."""
    monkeypatch.delenv("PIPELINES_API_KEYS", raising=False)
    root = tmp_path / "copy"
    shutil.copytree(reg["root"] / "registry", root / "registry")
    vdir = root / "registry" / reg["model"] / "versions" / "v0001"
    weights = vdir / "files" / "adapter" / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    manifest = json.loads((vdir / "manifest.json").read_text())
    manifest["files"]["adapter/adapter_model.safetensors"] = sha256_file(weights)
    (vdir / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    params = parse_params({"registry": {"root": str(root / "registry"), "model_name": reg["model"]}})
    with TestClient(create_app(params, poll=False)) as c:
        r = c.get("/readyz")
        assert r.status_code == 503
        served = c.post("/v1/classify", json={"texts": ["card"]})
        assert served.status_code == 503 and "manifest.json altered" in served.json()["error"]["message"]


def test_a_file_swapped_after_the_check_is_never_what_is_served(reg, tmp_path, monkeypatch):
    """The bytes that were hashed are the bytes that are loaded: a file swapped on the registry's disk
    between the check and the load (here: v2's adapter put in v1's place) changes nothing served."""
    import numpy as np

    from pipelines.inference import predict
    from pipelines.training import modeling

    monkeypatch.delenv("PIPELINES_API_KEYS", raising=False)
    shutil.copytree(reg["root"] / "registry", tmp_path / "registry")
    files = tmp_path / "registry" / reg["model"] / "versions" / "v0001" / "files"
    genuine_model, genuine_tok = modeling.load_trained(files)
    texts = ["my new card has not arrived", "I want my money back", "change my pin please"]
    genuine = predict.classify(genuine_model, genuine_tok, texts, 32)
    from safetensors.torch import load_file, save_file

    adapter = files / "adapter" / "adapter_model.safetensors"
    evil = tmp_path / "evil.safetensors"  # other weights of the same shapes: other answers
    save_file({k: v + 0.5 for k, v in load_file(adapter).items()}, str(evil))
    real_load, seen = modeling.load_trained, []

    def swap_then_load(model_dir, *args, **kwargs):
        adapter.write_bytes(evil.read_bytes())  # after the check, before the load
        seen.append(Path(model_dir))
        return real_load(model_dir, *args, **kwargs)

    monkeypatch.setattr(modeling, "load_trained", swap_then_load)
    params = parse_params({"registry": {"root": str(tmp_path / "registry"), "model_name": reg["model"]}})
    with TestClient(create_app(params, poll=False)) as c:
        served = c.post("/v1/classify", json={"texts": texts, "top_k": 3})
    assert served.status_code == 200, served.text
    assert seen and files not in [seen[0], *seen[0].parents]  # loaded from a private copy, not the registry
    label_map = json.loads((files / "label_map.json").read_text())
    want = [{label: float(p[i]) for label, i in label_map.items()} for p in genuine]
    got = [{t["label"]: t["score"] for t in item["top_k"]} for item in served.json()["results"]]
    assert [sorted(g) for g in got] == [sorted(w) for w in want]
    assert all(np.isclose(g[k], w[k], atol=1e-5) for g, w in zip(got, want) for k in w)  # v1's answers, not v2's


def test_an_alias_that_is_not_set_is_said(reg, monkeypatch, caplog):
    monkeypatch.delenv("PIPELINES_API_KEYS", raising=False)
    with caplog.at_level("ERROR", logger="pipelines.serving.engine"):
        with TestClient(create_app(params_for(reg), alias="canary", poll=False)) as c:
            r = c.post("/v1/classify", json={"texts": ["card"]})
    assert r.status_code == 503 and "alias 'canary' is not set" in r.json()["error"]["message"]
    assert any("alias 'canary' is not set" in m for m in caplog.messages)


# ---------------------------------------------------------------- fuzz against the OpenAPI document

def _strategy(schema: dict, components: dict, depth: int = 0):
    """A hypothesis strategy for a JSON schema as FastAPI writes it (objects, arrays, scalars, enums, anyOf)."""
    if "$ref" in schema:
        return _strategy(components[schema["$ref"].rsplit("/", 1)[-1]], components, depth)
    if "anyOf" in schema:
        return st.one_of([_strategy(s, components, depth) for s in schema["anyOf"]])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if kind == "object" and depth < 4:
        props = schema.get("properties", {})
        required = set(schema.get("required", []))
        return st.fixed_dictionaries(
            {k: _strategy(v, components, depth + 1) for k, v in props.items() if k in required},
            optional={k: _strategy(v, components, depth + 1) for k, v in props.items() if k not in required})
    if kind == "array" and depth < 4:
        return st.lists(_strategy(schema.get("items", {}), components, depth + 1), max_size=5)
    if kind == "string":
        return st.text(alphabet=st.characters(codec=None), max_size=60) | st.sampled_from(["\ud800", "a\udfffb"])
    if kind == "integer":
        return st.integers(-10, 10_000)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    return st.none() | st.integers() | st.text(max_size=10)


def _mutate(value):
    """Valid bodies, and bodies with a field dropped or of the wrong type."""
    return st.one_of(st.just(value), st.just({k: v for k, v in list(value.items())[1:]}),
                     st.sampled_from(list(value) or ["x"]).map(lambda k: {**value, k: {"wrong": [1]}}))


@pytest.fixture(scope="module")
def openapi_client(reg):
    import os

    os.environ.pop("PIPELINES_API_KEYS", None)
    with TestClient(create_app(params_for(reg, max_body_bytes=4096), poll=False)) as c:
        yield c, c.get("/openapi.json").json()


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_fuzz_every_answer_is_documented_in_openapi(openapi_client, data):
    client, doc = openapi_client
    components = doc["components"]["schemas"]
    path = data.draw(st.sampled_from([p for p, ops in doc["paths"].items() if "post" in ops]))
    op = doc["paths"][path]["post"]
    schema = op["requestBody"]["content"]["application/json"]["schema"]
    body = data.draw(_strategy(schema, components).flatmap(_mutate))
    r = client.post(path, content=json.dumps(body).encode(), headers={"content-type": "application/json"})
    documented = {int(code) for code in op["responses"]}
    assert r.status_code in documented, (path, body, r.status_code, r.text)
    if r.status_code >= 400:
        assert _is_error_shape(r), r.text


@pytest.fixture(scope="module")
def gen_reg(tmp_path_factory):
    from tests.tiny_models import build_causal

    root = tmp_path_factory.mktemp("gen-attacks")
    return build_registry(root, "causal_lm", versions=1, base_model=str(build_causal("llama", root / "base")))


def _cancelled(url: str) -> float:
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith("pipelines_generations_cancelled_total "):
            return float(line.split()[1])
    return 0.0


def test_a_base_model_that_is_not_the_one_trained_on_is_never_served(gen_reg, tmp_path, monkeypatch):
    monkeypatch.delenv("PIPELINES_API_KEYS", raising=False)
    config = json.loads((gen_reg["candidates"][0][0] / "train_config.json").read_text())
    weights = next(Path(config["base_path"]).glob("*.safetensors"))
    original = weights.read_bytes()
    changed = bytearray(original)
    changed[-1] ^= 0x01  # one bit of the base's weights: the adapter's own files are untouched
    weights.write_bytes(bytes(changed))
    try:
        with TestClient(create_app(params_for(gen_reg), poll=False)) as c:
            r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 503 and "base model is not the one it was trained on" in r.json()["error"]["message"]
    finally:
        weights.write_bytes(original)
    with TestClient(create_app(params_for(gen_reg), poll=False)) as c:
        assert c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}],
                                                    "max_tokens": 2}).status_code == 200


def _hot(seed: int, tokens: int = 2000) -> dict:
    return {"messages": [{"role": "user", "content": "hello"}], "max_tokens": tokens, "temperature": 2.0, "seed": seed}


@pytest.fixture(scope="module")
def long_ask(gen_reg):
    """A request whose answer runs past 700 tokens, and how long it takes here: the limits below are set
    from it, so the tests hold on a slower or faster machine."""
    import os

    os.environ.pop("PIPELINES_API_KEYS", None)
    with TestClient(create_app(params_for(gen_reg, max_tokens=2000, request_timeout_s=120), poll=False)) as c:
        for seed in range(25):
            started = time.perf_counter()
            if c.post("/v1/chat/completions", json=_hot(seed)).json()["usage"]["completion_tokens"] >= 700:
                return _hot(seed), time.perf_counter() - started
    raise AssertionError("no seed gave a long answer")


def test_a_streaming_client_that_disconnects_mid_answer_stops_the_generation(gen_reg, long_ask, monkeypatch):
    """The model stops at its next token when the client goes away (no compute for nobody), the
    generation slot is free again and the server keeps answering."""
    monkeypatch.delenv("PIPELINES_API_KEYS", raising=False)
    params = params_for(gen_reg, max_tokens=2000, max_queue=1)
    server, port = _serve_thread(create_app(params, poll=False), params.serve)
    url = f"http://127.0.0.1:{port}"
    try:
        ask, full = long_ask
        started = time.perf_counter()
        with httpx.stream("POST", f"{url}/v1/chat/completions", json={**ask, "stream": True}, timeout=30) as s:
            first = next(line for line in s.iter_lines() if line.startswith("data: "))
            assert json.loads(first[6:])["object"] == "chat.completion.chunk"
        # the connection is closed with most of the answer still to come
        while _cancelled(url) < 1 and time.perf_counter() - started < 30:
            time.sleep(0.05)
        assert _cancelled(url) == 1
        asked = time.perf_counter()
        after = httpx.post(f"{url}/v1/chat/completions", json={**ask, "max_tokens": 3}, timeout=30)
        assert after.status_code == 200, after.text  # not 429: the one slot was given back
        # the model's one worker is free at once: it is not finishing the abandoned answer first
        assert time.perf_counter() - asked < full / 3, (time.perf_counter() - asked, full)
        assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
    finally:
        server.should_exit = True


# ---------------------------------------------------------------- round two (issue 26 §4): streams, limits, models

def _events(lines) -> list:
    """The data of a server-sent event stream, decoded (the last is the literal [DONE])."""
    return [line[6:] if line[6:] == "[DONE]" else json.loads(line[6:]) for line in lines if line.startswith("data: ")]


@contextlib.contextmanager
def _gen_server(gen_reg, **serve):
    params = params_for(gen_reg, max_tokens=2000, max_input_tokens=40, **serve)
    server, port = _serve_thread(create_app(params, poll=False), params.serve)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True


@pytest.fixture(scope="module")
def gen_server(gen_reg):
    """The tiny LLM with the usual limits but 40 input tokens."""
    with _gen_server(gen_reg) as url:
        yield url


def test_a_stream_longer_than_the_request_timeout_ends_honestly_at_its_own_limit(gen_reg, long_ask):
    """Past request_timeout_s a stream goes on (it is not cut with a bare 200); at stream_total_s it ends with
    an error event naming the limit, then [DONE], and the generation stops."""
    ask, full = long_ask
    with _gen_server(gen_reg, request_timeout_s=full / 4, stream_total_s=full / 2) as url:
        started = time.perf_counter()
        with httpx.stream("POST", f"{url}/v1/chat/completions", json={**ask, "stream": True}, timeout=60) as s:
            events = _events(s.iter_lines())
        took = time.perf_counter() - started
        assert events[-1] == "[DONE]" and "error" in events[-2], events[-3:]
        assert "ran past serve.stream_total_s" in events[-2]["error"]["message"] and events[-2]["error"]["code"] == 504
        assert sum(1 for e in events if isinstance(e, dict) and e.get("choices")) > 1 and full / 2 <= took < full
        assert _cancelled(url) == 1


def test_a_stream_whose_first_token_does_not_come_says_so(gen_reg, long_ask):
    """A stream queued behind another generation on the model's worker: no first token within
    stream_first_token_s is an error event and [DONE], not a silent hang."""
    import threading

    ask, full = long_ask
    with _gen_server(gen_reg, request_timeout_s=full * 4, stream_first_token_s=full / 3) as url:
        busy = threading.Thread(target=lambda: httpx.post(f"{url}/v1/chat/completions", json=ask, timeout=60))
        busy.start()
        time.sleep(min(0.2, full / 10))
        with httpx.stream("POST", f"{url}/v1/chat/completions", json={**ask, "stream": True, "max_tokens": 5},
                          timeout=60) as s:
            events = _events(s.iter_lines())
        busy.join()
    assert events[-1] == "[DONE]" and "no first token within serve.stream_first_token_s" in \
        events[-2]["error"]["message"], events


def test_a_failing_generation_inside_a_stream_is_reported(gen_server, monkeypatch):
    from pipelines.serving import app as served_app

    url = gen_server

    def broken(*args, **kwargs):
        raise RuntimeError("probability tensor contains inf")

    monkeypatch.setattr(served_app, "generate", broken)
    with httpx.stream("POST", f"{url}/v1/completions", timeout=30,
                      json={"prompt": "hi", "stream": True, "temperature": 1.0, "max_tokens": 5}) as s:
        events = _events(s.iter_lines())
    assert events[-1] == "[DONE]" and events[-2]["error"]["code"] == 500
    assert "RuntimeError: probability tensor contains inf" in events[-2]["error"]["message"]


@pytest.mark.parametrize("body, status, says", [
    ({"prompt": "", "max_tokens": 3}, 422, "prompt"),  # an empty prompt: a 4xx naming it, never a 500
    ({"prompt": "hi", "max_tokens": 3, "temperature": 1e-30}, 200, None),  # tiny temperatures are greedy
    ({"prompt": "hi", "max_tokens": 3, "temperature": 1e-30, "stream": True}, 200, None),
    ({"prompt": "word " * 40, "max_tokens": 3}, 413, "prompt: "),  # tokens counted on every route
    ({"prompt": "hi", "n": 2}, 400, "n: this server returns one choice"),  # fields it cannot honour
    ({"prompt": "hi", "logprobs": 5}, 400, "logprobs: log-probabilities are not returned"),
    ({"prompt": "hi", "max_tokens": 2, "user": "u-1", "n": 1}, 200, None),  # harmless ones are fine
])
def test_completions_edge_cases_are_answered_or_a_4xx(gen_server, body, status, says):
    url = gen_server
    r = httpx.post(f"{url}/v1/completions", json=body, timeout=60)
    assert r.status_code == status, r.text
    if says:
        assert says in r.json()["error"]["message"]
    if body.get("stream"):
        assert r.text.rstrip().endswith("data: [DONE]") and '"error"' not in r.text


@pytest.mark.parametrize("extra, says", [
    ({"messages": [{"role": "user", "content": "word " * 40}]}, "messages: "),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools: tool calls are not supported"),
    ({"tool_choice": "auto"}, "tool_choice: tool calls are not supported"),
])
def test_chat_input_tokens_and_unhonoured_fields_are_refused(gen_server, extra, says):
    url = gen_server
    r = httpx.post(f"{url}/v1/chat/completions", timeout=60,
                   json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **extra})
    assert r.status_code in (400, 413) and says in r.json()["error"]["message"], r.text
    assert "tokens, over 40" in r.text if "messages" in extra else True


def test_the_generation_a_504_gives_up_on_is_stopped_and_health_says_when_a_worker_is_stuck(gen_reg, long_ask):
    """The 504 stops its generation (the worker is free at once after); while one job runs longer than
    stuck_after_s, /healthz is 503."""
    import threading

    ask, full = long_ask
    with _gen_server(gen_reg, request_timeout_s=full / 2, stuck_after_s=full / 6) as url:
        seen = []

        def watch():
            for _ in range(10):
                seen.append(httpx.get(f"{url}/healthz", timeout=10).status_code)
                time.sleep(full / 20)
        watcher = threading.Thread(target=watch)
        watcher.start()
        r = httpx.post(f"{url}/v1/chat/completions", json=ask, timeout=60)
        watcher.join()
        assert r.status_code == 504, r.text
        assert 503 in seen  # the worker was busy on one job past stuck_after_s: said while it lasted
        deadline = time.time() + 10
        while _cancelled(url) < 1 and time.time() < deadline:
            time.sleep(0.05)
        assert _cancelled(url) == 1
        asked = time.perf_counter()
        small = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        assert httpx.post(f"{url}/v1/chat/completions", json=small, timeout=30).status_code == 200
        assert time.perf_counter() - asked < full / 2  # not behind the abandoned answer
        assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200


def test_one_model_is_never_held_up_by_another(reg, gen_reg, long_ask, monkeypatch):
    """serve --all: each model has its own worker: a classifier answers while a long generation runs."""
    import threading

    monkeypatch.delenv("PIPELINES_API_KEYS", raising=False)
    ask, full = long_ask
    server_params = params_for(reg, request_timeout_s=60, max_tokens=2000)
    app = create_app(server_params, poll=False, models={reg["model"]: params_for(reg), gen_reg["model"]: params_for(gen_reg)})
    server, port = _serve_thread(app, server_params.serve)
    url = f"http://127.0.0.1:{port}"
    try:
        busy = threading.Thread(target=lambda: httpx.post(f"{url}/v1/chat/completions",
                                                          json={"model": gen_reg["model"], **ask}, timeout=120))
        busy.start()
        time.sleep(min(0.2, full / 10))
        asked = time.perf_counter()
        r = httpx.post(f"{url}/v1/classify", json={"model": reg["model"], "texts": ["my card"]}, timeout=60)
        answered = time.perf_counter() - asked
        busy.join()
        assert r.status_code == 200 and answered < full / 3, (answered, full)
    finally:
        server.should_exit = True


def test_idle_connections_never_lock_a_client_out(reg, monkeypatch):
    """max_connections 40, all taken by connections that never send a request: a real client still gets
    in (the oldest idle one makes room), and one address cannot hold more than its share."""
    monkeypatch.delenv("PIPELINES_API_KEYS", raising=False)
    params = params_for(reg, header_timeout_s=30.0, max_connections=40, max_connections_per_client=30)
    server, port = _serve_thread(create_app(params, poll=False), params.serve)
    socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(60)]
    try:
        time.sleep(0.5)
        for _ in range(3):  # each new client's connection takes an idle one's place
            r = httpx.post(f"http://127.0.0.1:{port}/v1/classify", json={"texts": ["card"]}, timeout=10)
            assert r.status_code == 200, r.text
        alive = 0
        for s in socks:
            s.settimeout(0.2)
            try:
                alive += s.recv(1) != b""
            except (socket.timeout, TimeoutError):
                alive += 1  # still open
            except ConnectionResetError:
                pass
        assert alive <= 30  # one address: at most its share, the oldest idle ones closed
    finally:
        for s in socks:
            s.close()
        server.should_exit = True
