"""The serving app in-process (FastAPI TestClient): API shapes, auth, limits, routing, fuzzing."""
from __future__ import annotations

import json
import re
import threading
import time

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.core.config import parse_params
from pipelines.registry import store as registry
from pipelines.serving.app import create_app
from tests.serving_support import FakeUpstream, build_registry, start_loopback
from tests.tiny_models import build_causal

KEY = "s3cret-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def cls_registry(tmp_path_factory):
    return build_registry(tmp_path_factory.mktemp("cls"), "classification", versions=1)


@pytest.fixture(scope="module")
def gen_registry(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    base = build_causal("llama", root / "base")
    return build_registry(root, "causal_lm", versions=1, base_model=str(base))


def app_for(reg, monkeypatch=None, batching=True, **serve):
    params = parse_params({"registry": {"root": str(reg["root"] / "registry"), "model_name": reg["model"]},
                           "serve": {"poll_seconds": 0.2, **serve}})
    return create_app(params, batching=batching, poll=False)


@pytest.fixture
def client(cls_registry, monkeypatch):
    monkeypatch.setenv("PIPELINES_API_KEYS", f"other-key,{KEY}")
    with TestClient(app_for(cls_registry, max_texts=4, max_chars=200, max_body_bytes=4096)) as c:
        yield c


def test_classify_shape_and_version(client):
    r = client.post("/v1/classify", json={"texts": ["my new card has not arrived yet 3", "money back please"],
                                          "top_k": 2}, headers=AUTH)
    assert r.status_code == 200, r.text
    body = r.json()
    assert r.headers["X-Model-Version"] == "1" and body["model_version"] == 1
    first = body["results"][0]
    assert first["label"] in {"card_arrival", "refund_request", "change_pin"} and first["route"] == "local"
    assert len(first["top_k"]) == 2 and first["top_k"][0]["score"] >= first["top_k"][1]["score"]
    assert client.get("/v1/models", headers=AUTH).json()["data"][0]["version"] == 1


@pytest.mark.parametrize("path, method", [("/v1/classify", "post"), ("/v1/models", "get"), ("/metrics", "get")])
def test_auth_required_except_health(client, path, method):
    body = {"json": {"texts": ["x"]}} if method == "post" else {}
    assert client.request(method.upper(), path, **body).status_code == 401
    bad = {"Authorization": "Bearer s3cret-kez"}
    assert client.request(method.upper(), path, headers=bad, **body).status_code == 401
    assert client.request(method.upper(), path, headers=AUTH, **body).status_code == 200
    assert client.get("/healthz").status_code == 200 and client.get("/readyz").json()["status"] == "ready"


@pytest.mark.parametrize("payload, status, names", [
    ({"texts": []}, 422, "texts"),
    ({"texts": "one"}, 422, "texts"),
    ({"texts": ["a"], "top_k": 0}, 422, "top_k"),
    ({"texts": ["a"], "extra": 1}, 422, "extra"),
    ({"texts": ["a"] * 5}, 413, "texts"),
    ({"texts": ["a", "b" * 201]}, 413, "texts[1]"),
    ({}, 422, "texts"),
])
def test_bad_requests_are_4xx_naming_the_field(client, payload, status, names):
    r = client.post("/v1/classify", json=payload, headers=AUTH)
    assert r.status_code == status, r.text
    assert names in json.dumps(r.json())


def test_input_token_limit(cls_registry):
    with TestClient(app_for(cls_registry, max_input_tokens=6)) as c:
        ok = c.post("/v1/classify", json={"texts": ["short one"]})
        assert ok.status_code == 200
        r = c.post("/v1/classify", json={"texts": ["fine", "one two three four five six seven eight"]})
        assert r.status_code == 413 and "texts[1]" in r.text and "over 6" in r.text


def test_malformed_json_and_oversized_body(client):
    r = client.post("/v1/classify", content=b'{"texts": [', headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 422
    r = client.post("/v1/classify", content=b"x" * 5000, headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 413


def test_metrics_count_requests_batches_and_version(client):
    client.post("/v1/classify", json={"texts": ["hello"]}, headers=AUTH)
    text = client.get("/metrics", headers=AUTH).text
    assert 'pipelines_requests_total{path="/v1/classify",status="200"}' in text
    assert 'pipelines_model_version{model="text-classifier"} 1.0' in text and "pipelines_batch_size_count" in text


def test_full_queue_answers_429(cls_registry):
    with TestClient(app_for(cls_registry, max_queue=1, max_wait_ms=200)) as c:
        results = []

        def hit():
            results.append(c.post("/v1/classify", json={"texts": ["card"]}).status_code)
        threads = [threading.Thread(target=hit) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert 429 in results and 200 in results


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=st.one_of(
    st.binary(max_size=300),
    st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
                 lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
                 max_leaves=12).map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"texts": st.lists(st.text(max_size=300), max_size=6),
                           "top_k": st.integers(-5, 30)}).map(lambda v: json.dumps(v).encode()),
))
def test_fuzz_never_kills_the_server(client, body):
    for path in ("/v1/classify", "/v1/chat/completions", "/v1/completions"):
        r = client.post(path, content=body, headers={**AUTH, "content-type": "application/json"})
        assert r.status_code < 500, (path, body, r.status_code, r.text)
    assert client.get("/healthz").status_code == 200


def test_chat_completion_stream_and_completions(gen_registry):
    with TestClient(app_for(gen_registry)) as c:
        r = c.post("/v1/chat/completions", json={"model": "text-gen", "max_tokens": 5,
                                                 "messages": [{"role": "user", "content": "question 3: what is 3 plus 3?"}]})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["object"] == "chat.completion" and body["choices"][0]["message"]["role"] == "assistant"
        assert body["usage"]["completion_tokens"] <= 5 and r.headers["X-Model-Version"] == "1"
        with c.stream("POST", "/v1/chat/completions", json={"stream": True, "max_tokens": 4,
                                                            "messages": [{"role": "user", "content": "hello"}]}) as s:
            lines = [ln for ln in s.iter_lines() if ln.startswith("data: ")]
        assert lines[-1] == "data: [DONE]"
        assert json.loads(lines[-2][6:])["choices"][0]["finish_reason"] == "stop"
        streamed = "".join(json.loads(ln[6:])["choices"][0]["delta"].get("content", "") for ln in lines[:-1])
        with c.stream("POST", "/v1/chat/completions", json={"stream": True, "max_tokens": 4, "stream_options": {
                "include_usage": True}, "messages": [{"role": "user", "content": "hello"}]}) as s:
            lines = [ln for ln in s.iter_lines() if ln.startswith("data: ")]
        last = json.loads(lines[-2][6:])  # OpenAI's usage chunk: no choices, the request's token counts
        assert last["choices"] == [] and 1 <= last["usage"]["completion_tokens"] <= 4
        whole = c.post("/v1/chat/completions", json={"max_tokens": 4, "messages": [{"role": "user", "content": "hello"}]})
        assert whole.json()["usage"] == last["usage"] and whole.json()["choices"][0]["message"]["content"] == streamed
        r = c.post("/v1/completions", json={"prompt": "question 1", "max_tokens": 3})
        assert r.status_code == 200 and r.json()["object"] == "text_completion"
        assert c.post("/v1/chat/completions", json={"max_tokens": 100000, "messages": [
            {"role": "user", "content": "x"}]}).status_code == 422
        assert c.post("/v1/classify", json={"texts": ["x"]}).status_code == 400


def test_hybrid_routing_low_confidence_goes_upstream_and_failures_fall_back(cls_registry):
    up = FakeUpstream("change_pin")
    try:
        app = app_for(cls_registry, fallback={"url": up.url, "classify_threshold": 0.999})
        with TestClient(app) as c:
            r = c.post("/v1/classify", json={"texts": ["something unclear"]}).json()["results"][0]
            assert r["route"] == "upstream" and r["label"] == "change_pin" and "local_label" in r
            assert "change_pin" in up.calls[-1]["messages"][0]["content"]
            metrics = c.get("/metrics").text
            assert 'pipelines_route_requests_total{model="text-classifier",route="upstream"} 1.0' in metrics
            assert 'pipelines_route_tokens_total{model="text-classifier",route="upstream"} 12.0' in metrics
            # 10 prompt and 2 completion tokens at gpt-4o-mini's list price ($0.15 / $0.60 per 1M)
            assert 'pipelines_route_cost_usd_total{model="text-classifier",route="upstream"} 2.7e-06' in metrics
            up.answer = "not-a-label"
            r = c.post("/v1/classify", json={"texts": ["something unclear"]}).json()["results"][0]
            assert r["route"] == "local" and "fallback_error" in r
        up.stop()
        time.sleep(0.3)
        with TestClient(app_for(cls_registry, fallback={"url": up.url,
                                                        "classify_threshold": 0.999, "timeout_s": 1})) as c:
            r = c.post("/v1/classify", json={"texts": ["something unclear"]})
            assert r.status_code == 200 and r.json()["results"][0]["fallback_error"].startswith("upstream failed")
    finally:
        up.stop()


@pytest.mark.parametrize("classify_threshold, tuned, routed", [
    ("tuned", 0.999, True),   # the served version's own threshold (its routing evidence)
    ("tuned", 0.0, False),
    (0.999, 0.0, True),       # a hand-set number wins over it
])
def test_the_served_versions_tuned_threshold_decides_the_route(cls_registry, tmp_path, classify_threshold, tuned,
                                                               routed):
    store = registry.open_store(str(tmp_path / "registry"), "text-classifier")
    registry.init(store)
    registry.promote(store, "text-classifier", *cls_registry["candidates"][0], None,
                     evidence={"evaluate_routing.json": json.dumps({"threshold": tuned}).encode()})
    up = FakeUpstream("change_pin")
    try:
        reg = {"root": tmp_path, "model": "text-classifier"}
        with TestClient(app_for(reg, fallback={"url": up.url, "classify_threshold": classify_threshold})) as c:
            r = c.post("/v1/classify", json={"texts": ["something unclear"]}).json()["results"][0]
            assert (r["route"] == "upstream") is routed and r["label"] == ("change_pin" if routed else r["label"])
    finally:
        up.stop()


def test_out_of_domain_chat_goes_upstream(gen_registry):
    up = FakeUpstream("Our refund policy is ...")
    try:
        app = app_for(gen_registry, fallback={"url": up.url, "ood_patterns": ["refund policy"]})
        with TestClient(app) as c:
            r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "What is your REFUND POLICY?"}]})
            assert r.json()["route"] == "upstream" and r.json()["choices"][0]["message"]["content"].startswith("Our")
            r = c.post("/v1/chat/completions", json={"max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]})
            assert r.json()["route"] == "local"
    finally:
        up.stop()


def test_sampling_stop_and_seed(gen_registry):
    chat = {"max_tokens": 12, "messages": [{"role": "user", "content": "question 3: what is 3 plus 3?"}]}
    with TestClient(app_for(gen_registry)) as c:
        greedy = c.post("/v1/chat/completions", json=chat).json()["choices"][0]["message"]["content"]
        assert greedy == c.post("/v1/chat/completions", json=chat).json()["choices"][0]["message"]["content"]
        words = greedy.split()
        assert len(words) >= 2, greedy
        cut = c.post("/v1/chat/completions", json={**chat, "stop": [words[1]]}).json()["choices"][0]["message"]
        assert cut["content"] == greedy.split(words[1], 1)[0]  # ends before the stop sequence, which is left out
        seeded = {**chat, "temperature": 1.5, "top_p": 0.95, "seed": 7}
        first = c.post("/v1/chat/completions", json=seeded).json()["choices"][0]["message"]["content"]
        assert first == c.post("/v1/chat/completions", json=seeded).json()["choices"][0]["message"]["content"]
        answers = {c.post("/v1/chat/completions", json={**seeded, "seed": s}).json()["choices"][0]["message"]["content"]
                   for s in range(8)}
        assert len(answers) > 1, "sampling at temperature 1.5 never varied over 8 seeds"


SAMPLING_BAD = [
    ({"temperature": 3}, 422, "temperature"),
    ({"top_p": 0}, 422, "top_p"),
    ({"stop": ["a", "b", "c", "d", "e"]}, 422, "stop"),
    ({"stop": ""}, 422, "stop"),
    ({"response_format": {"type": "yaml"}}, 422, "response_format"),
    ({"response_format": {"type": "json_object"}, "stream": True}, 422, "response_format"),
    ({"response_format": {"type": "json_object"}}, 422, "response_format"),  # the tiny model cannot answer JSON
]


@pytest.mark.parametrize("extra, status, field", SAMPLING_BAD, ids=[f"{b[2]}-{i}" for i, b in enumerate(SAMPLING_BAD)])
def test_bad_generation_options_are_4xx_naming_the_field(gen_registry, extra, status, field):
    with TestClient(app_for(gen_registry)) as c:
        r = c.post("/v1/chat/completions", json={"max_tokens": 4, "messages": [{"role": "user", "content": "hi"}],
                                                 **extra})
        assert r.status_code == status, r.text
        assert field in json.dumps(r.json()["error"])
        assert c.get("/healthz").status_code == 200


def test_json_mode_falls_back_to_the_upstream_when_the_local_answer_is_not_json(gen_registry):
    up = FakeUpstream('{"intent": "refund"}')
    try:
        with TestClient(app_for(gen_registry, fallback={"url": up.url})) as c:
            r = c.post("/v1/chat/completions", json={"max_tokens": 4, "response_format": {"type": "json_object"},
                                                     "messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code == 200, r.text
            assert r.json()["route"] == "upstream"
            assert json.loads(r.json()["choices"][0]["message"]["content"]) == {"intent": "refund"}
            assert 'pipelines_route_requests_total{model="text-gen",route="upstream"} 1.0' in c.get("/metrics").text
    finally:
        up.stop()


@pytest.mark.parametrize("floor, extra, route", [
    (-1e-9, {}, "upstream"),  # every answer is less sure than certainty: all go upstream
    (-1e6, {}, "local"),  # none is that unsure
    (-1e-9, {"temperature": 0.7, "seed": 1}, "local"),  # sampled: no greedy log-probability to judge by
])
def test_unsure_greedy_answers_go_upstream(gen_registry, floor, extra, route):
    up = FakeUpstream("I will pass this to a specialist.")
    try:
        with TestClient(app_for(gen_registry, fallback={"url": up.url, "min_mean_logprob": floor})) as c:
            r = c.post("/v1/chat/completions", json={"max_tokens": 6, "messages": [{"role": "user", "content": "hi"}],
                                                     **extra})
            assert r.status_code == 200, r.text
            body, metrics = r.json(), c.get("/metrics").text
            assert body["route"] == route
            if route == "upstream":
                assert body["choices"][0]["message"]["content"] == "I will pass this to a specialist."
                assert floor > body["local_mean_logprob"] > -50
                assert 'pipelines_route_requests_total{model="text-gen",route="upstream"} 1.0' in metrics
                local = r'pipelines_route_tokens_total\{model="text-gen",route="local"\} [1-9]'
                assert re.search(local, metrics)  # the discarded local answer's tokens, spent anyway
            else:
                assert "local_mean_logprob" not in body and 'route="upstream"} 1.0' not in metrics
    finally:
        up.stop()


def test_generations_beyond_the_bound_get_429_and_a_finished_stream_frees_its_slot(gen_registry):
    chat = {"max_tokens": 3, "messages": [{"role": "user", "content": "hello"}]}
    with TestClient(app_for(gen_registry, max_queue=1)) as c:
        with c.stream("POST", "/v1/chat/completions", json={**chat, "stream": True}) as s:
            busy = c.post("/v1/chat/completions", json=chat)  # the stream holds the only slot
            assert busy.status_code == 429 and busy.headers["Retry-After"] == "1"
            assert "too many generations" in busy.json()["error"]["message"]
            assert c.post("/v1/completions", json={"prompt": "x", "max_tokens": 2}).status_code == 429
            list(s.iter_lines())
        assert c.post("/v1/chat/completions", json=chat).status_code == 200
        assert c.post("/v1/chat/completions", json=chat).status_code == 200  # non-streamed answers give it back


def test_concurrent_greedy_generations_share_a_batch_and_answer_as_alone(gen_registry):
    """Eight clients at once: their answers are batched into fewer generate calls than requests, and
    each is the answer that request gets alone (same text, same token counts)."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    server, url = start_loopback(app_for(gen_registry))
    prompts = [f"question {i}: what is {i} plus {i}?" for i in range(8)]

    def ask(prompt: str) -> dict:
        r = httpx.post(f"{url}/v1/chat/completions", timeout=60,
                       json={"max_tokens": 12, "messages": [{"role": "user", "content": prompt}]})
        assert r.status_code == 200, r.text
        return {"text": r.json()["choices"][0]["message"]["content"], "usage": r.json()["usage"]}

    try:
        alone = [ask(p) for p in prompts]
        with ThreadPoolExecutor(8) as pool:
            for _ in range(3):  # a few rounds: a round's requests arrive while a batch runs
                together = list(pool.map(ask, prompts))
                assert together == alone
        metrics = httpx.get(f"{url}/metrics").text
        calls = float(re.search(r"pipelines_generation_batch_size_count (\S+)", metrics).group(1))
        answered = float(re.search(r"pipelines_generation_batch_size_sum (\S+)", metrics).group(1))
        assert answered == 32 and calls < 32 - 8, metrics  # 8 alone + 24 concurrent, the latter batched
    finally:
        server.should_exit = True


def test_one_server_answers_for_every_model_by_the_model_field(cls_registry, gen_registry):
    cls = parse_params({"registry": {"root": str(cls_registry["root"] / "registry"), "model_name": "text-classifier"}})
    gen = parse_params({"registry": {"root": str(gen_registry["root"] / "registry"), "model_name": "text-gen"}})
    app = create_app(parse_params({"serve": {"poll_seconds": 0.2}}), poll=False,
                     models={"text-classifier": cls, "text-gen": gen})
    chat = {"max_tokens": 3, "messages": [{"role": "user", "content": "hello"}]}
    with TestClient(app) as c:
        listed = c.get("/v1/models").json()["data"]
        assert {(m["id"], m["task"], m["version"]) for m in listed} == {("text-classifier", "classification", 1),
                                                                        ("text-gen", "causal_lm", 1)}
        assert c.get("/readyz").json() == {"status": "ready", "models": {"text-classifier": 1, "text-gen": 1}}
        r = c.post("/v1/classify", json={"model": "text-classifier", "texts": ["my card has not arrived"]})
        assert r.status_code == 200 and r.json()["model"] == "text-classifier"
        r = c.post("/v1/chat/completions", json={"model": "text-gen", **chat})
        assert r.status_code == 200 and r.json()["model"] == "text-gen"
        r = c.post("/v1/chat/completions", json=chat)  # several served: the request must say which
        assert r.status_code == 400 and "model: this server serves text-classifier, text-gen" in r.text
        r = c.post("/v1/chat/completions", json={"model": "gpt-4o", **chat})
        assert r.status_code == 404 and "'gpt-4o' is not served here" in r.text
        r = c.post("/v1/chat/completions", json={"model": "text-classifier", **chat})
        assert r.status_code == 400 and "is a classification model" in r.text
        metrics = c.get("/metrics").text
        assert 'pipelines_model_version{model="text-classifier"} 1.0' in metrics
        assert 'pipelines_model_version{model="text-gen"} 1.0' in metrics


def test_serve_all_serves_every_model_folder(cls_registry, gen_registry, tmp_path):
    """`pipelines serve --all` from a checkout: each projects/<model>/params.yaml, its registry root
    relative to its folder, one server."""
    import os
    import subprocess
    import sys

    import httpx
    import yaml

    from pipelines.serving.engine import wait_ready
    from tests.conftest import cli_env
    from tests.serving_support import free_port

    for reg in (cls_registry, gen_registry):
        folder = tmp_path / "projects" / reg["model"]
        folder.mkdir(parents=True)
        (folder / "params.yaml").write_text(yaml.safe_dump({"registry": {
            "root": os.path.relpath(reg["root"] / "registry", folder), "model_name": reg["model"]},
            # each model keeps its own keys: text-gen asks for one, text-classifier for none (loopback)
            "serve": {"api_keys_file": "keys.txt"} if reg is gen_registry else {}}))
    (tmp_path / "projects" / "text-gen" / "keys.txt").write_text("gen-key\n")
    (tmp_path / "projects" / "broken").mkdir()
    (tmp_path / "projects" / "broken" / "params.yaml").write_text("registry: [unparsable\n")  # skipped, said
    port = free_port()
    env = {k: v for k, v in cli_env().items() if k != "PIPELINES_API_KEYS"}
    proc = subprocess.Popen([sys.executable, "-m", "pipelines", "serve", "--all", "--port", str(port)], cwd=tmp_path,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url, key = f"http://127.0.0.1:{port}", {"Authorization": "Bearer gen-key"}
    chat = {"model": "text-gen", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
    try:
        wait_ready(url, timeout=120, proc=proc)
        assert httpx.get(f"{url}/readyz").json() == {"status": "ready"}  # who serves what: for callers with a key
        ready = httpx.get(f"{url}/readyz", headers=key).json()
        assert ready["models"] == {"text-classifier": 1, "text-gen": 1} and "params.yaml" in ready["broken"]["broken"]
        assert [m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]] == ["text-classifier"]
        listed = httpx.get(f"{url}/v1/models", headers=key).json()["data"]
        assert sorted(m["id"] for m in listed) == ["text-classifier", "text-gen"]
        assert httpx.post(f"{url}/v1/chat/completions", json=chat).status_code == 401  # its own key, kept
        assert httpx.post(f"{url}/v1/chat/completions", json=chat, headers=key).status_code == 200
        assert httpx.post(f"{url}/v1/classify", json={"model": "text-classifier", "texts": ["card"]}).status_code == 200
        said = httpx.post(f"{url}/v1/classify", json={"model": "broken", "texts": ["card"]}, headers=key)
        assert said.status_code == 503 and "'broken' is not served" in said.text
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "warning: not serving broken:" in err and "authentication: OFF for text-classifier" in err
