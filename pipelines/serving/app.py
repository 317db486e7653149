"""HTTP routes of the serving app and its factory `create_app` (see `serve.py` for the moving parts
they use; `serve.py` does not import this module).

Inputs: JSON requests validated by pydantic models (bounded sizes; a 4xx names the bad field).
Outputs: OpenAI-compatible responses, each naming the model version in `model_version` and the
`X-Model-Version` header; `route` says whether the local model or the fallback upstream answered.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Request
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from pipelines.core.config import Params
from pipelines.core.contract import is_json_object
from pipelines.inference.predict import GREEDY, Answer, Ask, Sampling, failed
from pipelines.serving.engine import (
    Batcher,
    GenerationBatcher,
    Holder,
    Metrics,
    QueueFull,
    Slots,
    Worker,
    api_keys,
    check_key,
    classify,
    completion_id,
    generate,
    matches_ood,
    prompt_tokens,
)
from pipelines.tasks import task_spec

OPEN_PATHS = {"/healthz", "/readyz", "/docs", "/openapi.json"}
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
               405: "invalid_request_error", 408: "timeout_error", 413: "request_too_large",
               422: "invalid_request_error", 429: "rate_limit_error", 503: "service_unavailable",
               504: "timeout_error"}


def _utf8(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("contains a lone surrogate (\\ud800-\\udfff), which is not valid text") from None
    return text


Text = Annotated[str, AfterValidator(_utf8)]


class ClassifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    texts: list[Text] = Field(min_length=1)
    top_k: int = Field(3, ge=1, le=20)


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant", "tool"]
    content: Text


class ResponseFormat(BaseModel):
    type: Literal["text", "json_object"] = "text"


StopText = Annotated[str, Field(min_length=1, max_length=64)]


GREEDY_BELOW = 1e-3  # a temperature this small is greedy decoding (the sampling distribution is its argmax)


def _none_or(*allowed: Any):
    return lambda v: v is None or v in allowed


# OpenAI fields this server cannot honour, with the values that ask for nothing it lacks: any other value
# is a 400 naming the field (a client asking for 3 choices or tool calls must not get 1 plain answer).
UNHONOURED: dict[str, tuple[Any, str]] = {
    "n": (_none_or(1), "this server returns one choice per request (n=1)"),
    "best_of": (_none_or(1), "this server returns one choice per request (best_of=1)"),
    "logprobs": (lambda v: v is None or v is False or v == 0, "log-probabilities are not returned"),
    "top_logprobs": (_none_or(0), "log-probabilities are not returned"),
    "tools": (lambda v: not v, "tool calls are not supported"),
    "tool_choice": (_none_or("none"), "tool calls are not supported"),
    "functions": (lambda v: not v, "function calls are not supported"),
    "function_call": (_none_or("none"), "function calls are not supported"),
    "logit_bias": (lambda v: not v, "logit_bias is not supported"),
    "presence_penalty": (_none_or(0), "presence_penalty is not supported (0 only)"),
    "frequency_penalty": (_none_or(0), "frequency_penalty is not supported (0 only)"),
    "echo": (lambda v: v is None or v is False, "echo is not supported"),
    "suffix": (_none_or(""), "suffix is not supported"),
    "modalities": (lambda v: v is None or v == ["text"], "only text is generated"),
    "audio": (lambda v: v is None, "audio is not supported"),
    "prediction": (lambda v: v is None, "predicted outputs are not supported"),
}


class SamplingFields(BaseModel):
    """OpenAI's sampling fields: temperature 0 (the default here) is greedy, what evaluation measured.
    Fields this server does not know are accepted and unused (`user`, `store`, `metadata`...), except
    those in UNHONOURED asking for something it cannot do."""

    model_config = ConfigDict(extra="allow")
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = Field(None, ge=0, le=2 ** 63 - 1)
    stop: StopText | Annotated[list[StopText], Field(max_length=4)] | None = None  # OpenAI: up to 4

    def sampling(self) -> Sampling:
        stop = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        temperature = 0.0 if self.temperature < GREEDY_BELOW else self.temperature
        return Sampling(temperature, self.top_p, self.seed, tuple(stop))

    def unhonoured(self) -> tuple[str, str] | None:
        """(field, why) of the first field asking for what this server cannot do, or None."""
        for name, value in (self.model_extra or {}).items():
            accepts, why = UNHONOURED.get(name, (None, ""))
            if accepts is not None and not accepts(value):
                return name, why
        return None


class StreamOptions(BaseModel):
    include_usage: bool = False  # OpenAI: a last chunk with the request's token usage


class ChatRequest(SamplingFields):
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None


class CompletionRequest(SamplingFields):
    model: str | None = None
    prompt: Annotated[Text, Field(min_length=1)]
    max_tokens: int | None = Field(None, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: int


class ErrorResponse(BaseModel):
    """The one error shape of every route (OpenAI's): `{"error": {"message", "type", "param", "code"}}`."""

    error: ErrorDetail


def error_body(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": ERROR_TYPES.get(status, "server_error"), "param": param,
                      "code": status}}


def _documented(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorResponse, "description": ERROR_TYPES.get(code, "error")} for code in codes}


COMMON_ERRORS = (401, 404, 413, 422, 429, 503, 504)  # 404: a `model` this server does not serve


class Guard:
    """Pure ASGI middleware: body size limit, API keys, request timeout, request metrics.

    The body is read here, bounded in size (413 also for chunked bodies without a content-length) and
    in time (the request timeout covers it), then replayed to the app. Metrics label only known
    routes, so random paths cannot grow /metrics. (Starlette's BaseHTTPMiddleware costs a task and a
    stream copy per request; this does not.)"""

    def __init__(self, app, sp, app_state, metrics, routes: set[str]) -> None:
        self.app, self.sp, self.state, self.metrics, self.routes = app, sp, app_state, metrics, routes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t = time.perf_counter()
        path = scope["path"]
        status = {"code": 500}
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}

        limit: dict[str, Any] = {}

        async def send_tracked(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                started = dict(message.get("headers") or []).get(b"content-type", b"")
                if started.startswith(b"text/event-stream") and "cm" in limit:  # a stream keeps its own limits
                    limit["cm"].reschedule(asyncio.get_running_loop().time() + self.sp.stream_total_s + 30)
            await send(message)

        async def reject(code: int, message: str, extra: dict | None = None):
            from starlette.responses import JSONResponse

            await JSONResponse(error_body(code, message), code, headers=extra)(scope, receive, send_tracked)

        try:
            size = headers.get("content-length")
            if size is not None and (not size.isdigit() or int(size) > self.sp.max_body_bytes):
                return await reject(413, f"request body over {self.sp.max_body_bytes} bytes")
            # Every model's own keys (`serve.api_keys_*` of its params): a key of none is refused here, unless
            # a model that asks for none serves this route (each route then checks its model's keys).
            keys, open_model = self.state.keys, self.state.open_model
            per_model = open_model and path.startswith("/v1/")
            if path not in OPEN_PATHS and keys and not per_model and not check_key(keys, headers.get("authorization")):
                return await reject(401, "missing or invalid API key", {"WWW-Authenticate": "Bearer"})
            try:
                async with asyncio.timeout(self.sp.request_timeout_s) as limit["cm"]:  # no extra task per request
                    body = await self._read_body(receive)
                    if body is None:
                        return await reject(413, f"request body over {self.sp.max_body_bytes} bytes")
                    await self.app(scope, _replay(body, receive), send_tracked)
            except TimeoutError:
                if status["code"] == 500:
                    await reject(504, f"request took over {self.sp.request_timeout_s}s")
        finally:
            label = path if path in self.routes else "other"
            self.metrics.requests.labels(label, str(status["code"])).inc()
            self.metrics.latency.labels(label).observe(time.perf_counter() - t)

    async def _read_body(self, receive) -> bytes | None:
        """The whole body, or None once it passes max_body_bytes."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b"".join(chunks)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.sp.max_body_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)


def _replay(body: bytes, receive):
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # then the real channel (a disconnect)
    return replay


@dataclass
class ServedModel:
    """One model the server answers for, chosen by the request's OpenAI `model` field: its alias
    follower, batchers and hybrid-routing upstream."""

    name: str
    holder: Any
    worker: Any  # its own forward thread (engine.Worker)
    batcher: Any = None
    gen_batcher: Any = None
    upstream: Any = None
    fallback: Any = None  # its FallbackParams
    keys: tuple[str, ...] = ()  # its own API keys (its params' serve section); none: it asks for none


def install_routes(app, sp, models: dict[str, ServedModel], metrics, checker=None,
                   broken: dict[str, str] | None = None) -> None:
    from fastapi import HTTPException
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        message = str(first.get("msg", "invalid request")).encode("utf-8", "replace").decode("utf-8")
        return JSONResponse(error_body(422, f"{where}: {message}", where), 422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return JSONResponse(error_body(exc.status_code, str(exc.detail)), exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception):
        import logging

        logging.getLogger("pipelines.serving.engine").error("internal error on %s: %s: %s", request.url.path,
                                                   type(exc).__name__, exc)
        return JSONResponse(error_body(500, "internal error"), 500)

    broken = broken or {}

    def pick(requested: str | None, request: Request) -> ServedModel:
        """The model a request names (OpenAI's `model`); without one, the only model served. The caller
        must hold one of that model's own keys (when it has any)."""
        if requested is None:
            if len(models) == 1:
                m = next(iter(models.values()))
            else:
                raise HTTPException(400, f"model: this server serves {', '.join(models)}; name one")
        elif requested in broken:
            raise HTTPException(503, f"model: {requested!r} is not served: {broken[requested]}")
        elif requested not in models:
            raise HTTPException(404, f"model: {requested!r} is not served here (served: {', '.join(models)})")
        else:
            m = models[requested]
        if m.keys and not check_key(list(m.keys), request.headers.get("authorization")):
            raise HTTPException(401, f"model {m.name}: missing or invalid API key",
                                headers={"WWW-Authenticate": "Bearer"})
        return m

    def authenticated(request: Request) -> bool:
        keys = app.state.keys
        return not keys or check_key(keys, request.headers.get("authorization"))

    def served(m: ServedModel):
        loaded = m.holder.current
        if loaded is None:
            raise HTTPException(503, f"no model loaded for {m.name}: {m.holder.status}")
        return loaded

    def reply(body: dict, loaded, status: int = 200):
        return JSONResponse({**body, "model_version": loaded.version}, status,
                            headers={"X-Model-Version": str(loaded.version)})

    @app.get("/healthz", responses={503: {"description": "a model's worker is stuck"}})
    async def healthz():
        stuck = {n: round(m.worker.busy_for()) for n, m in models.items() if m.worker.busy_for() > sp.stuck_after_s}
        if stuck:  # busy on one job for longer than serve.stuck_after_s: restart me
            return JSONResponse({"status": "stuck", "busy_seconds": stuck}, 503)
        return {"status": "alive"}

    @app.get("/readyz", responses={503: {"description": "no model is loaded (yet)"}})
    async def readyz(request: Request):
        """Ready once every model has loaded or failed to, and one serves: a broken model is listed (to an
        authenticated caller, with the versions) and does not keep the others from being ready."""
        versions = {n: (m.holder.current.version if m.holder.current else None) for n, m in models.items()}
        loading = [n for n, m in models.items() if m.holder.current is None and m.holder.failed is None]
        failed = {**broken, **{n: m.holder.status for n, m in models.items()
                               if m.holder.current is None and m.holder.failed is not None}}
        status = "loading" if loading else "ready" if any(v is not None for v in versions.values()) else "unavailable"
        if not authenticated(request):  # who serves what is for callers with a key
            return JSONResponse({"status": status}, 200 if status == "ready" else 503)
        body = {"status": status, "models": versions, **({"broken": failed} if failed else {})}
        headers = {}
        if len(models) == 1 and versions[next(iter(models))] is not None:  # one model: its version, as before
            only = next(iter(versions.values()))
            body["model_version"], headers = only, {"X-Model-Version": str(only)}
        return JSONResponse(body, 200 if status == "ready" else 503, headers=headers)

    @app.get("/metrics", responses=_documented(401))
    async def prometheus():
        return PlainTextResponse(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", responses=_documented(401, 503))
    async def list_models(request: Request):
        said = request.headers.get("authorization")
        data = [{"id": n, "object": "model", "owned_by": "pipelines", "version": m.holder.current.version,
                 "task": m.holder.current.task} for n, m in models.items()
                if m.holder.current is not None and (not m.keys or check_key(list(m.keys), said))]
        if not data:
            raise HTTPException(503, "no model loaded yet")
        return JSONResponse({"object": "list", "data": data})

    def _answers(m: ServedModel, loaded, route: str) -> None:
        routes = task_spec(loaded.task).routes
        if route not in routes:
            raise HTTPException(400, f"model {m.name} v{loaded.version} is a {loaded.task} model; "
                                     f"use {' or '.join(routes)}")

    @app.post("/v1/classify", responses=_documented(400, *COMMON_ERRORS))
    async def classify_route(req: ClassifyRequest, request: Request):
        m = pick(req.model, request)
        loaded = served(m)
        _answers(m, loaded, "/v1/classify")
        await _check_texts(req.texts, loaded)
        try:
            if m.batcher is not None:
                probs = await m.batcher.submit(loaded, req.texts)
            else:
                probs = await asyncio.get_running_loop().run_in_executor(m.worker, classify, loaded, req.texts)
        except QueueFull:
            return JSONResponse(error_body(429, "server busy: queue full, retry later"), 429,
                                headers={"Retry-After": "1"})
        results = []
        for text, p in zip(req.texts, probs):
            order = p.argsort()[::-1][: req.top_k]
            top = [{"label": loaded.labels[i], "score": float(p[i])} for i in order]
            results.append({"label": top[0]["label"], "score": top[0]["score"], "top_k": top, "route": "local"})
        if m.upstream is not None:
            await m.upstream.reroute_low_confidence(req.texts, results, loaded, metrics)
        for r in results:
            if r["route"] == "local":
                metrics.routed.labels(m.name, "local").inc()
        metrics.tokens.labels(m.name, "local").inc(sum(len(t.split()) for t in req.texts))
        return reply({"object": "classification", "model": m.name, "results": results}, loaded)

    async def _check_texts(texts: list[str], loaded) -> None:
        if len(texts) > sp.max_texts:
            raise HTTPException(413, f"texts: at most {sp.max_texts} per request")
        for i, text in enumerate(texts):
            if len(text) > sp.max_chars:
                raise HTTPException(413, f"texts[{i}]: over {sp.max_chars} characters")
        if sp.max_input_tokens:
            # Without special tokens a text has at most one token per UTF-8 byte, so only texts longer
            # than the limit in bytes need counting: on the checker thread with the version's own copy
            # of the tokenizer (never the forward thread's, whose truncation state it would race with).
            long = [i for i, t in enumerate(texts) if len(t.encode("utf-8")) > sp.max_input_tokens]
            if long:
                tok = loaded.count_tok or loaded.tok
                counts = await asyncio.get_running_loop().run_in_executor(
                    checker, lambda: [len(ids) for ids in tok([texts[i] for i in long], add_special_tokens=False,
                                                              truncation=False)["input_ids"]])
                for i, n in zip(long, counts):
                    if n > sp.max_input_tokens:
                        raise HTTPException(413, f"texts[{i}]: {n} tokens, over {sp.max_input_tokens}")

    def _max_tokens(requested: int | None) -> int:
        if requested is not None and requested > sp.max_tokens:
            raise HTTPException(422, f"max_tokens: at most {sp.max_tokens}")
        return requested or min(64, sp.max_tokens)

    def unsure(m: ServedModel, answer: Answer) -> bool:
        """Hybrid routing on confidence: a greedy answer whose mean token log-probability is under
        the model's `serve.fallback.min_mean_logprob` goes to the upstream (when one is configured)."""
        floor = m.fallback.min_mean_logprob
        return (m.upstream is not None and floor is not None and answer.mean_logprob is not None
                and answer.mean_logprob < floor)

    def _batchable(m: ServedModel, sampling: Sampling) -> bool:
        """Greedy answers without stop strings share a batched generate; sampled ones (seeded:
        reproducible only alone) and stop strings take the one-request path."""
        return m.gen_batcher is not None and sampling.temperature == 0 and not sampling.stop

    async def _generate(m: ServedModel, loaded, messages, prompt, max_tokens, sampling=GREEDY) -> Answer:
        """The answer; its mean token log-probability only from the batched greedy path (else None). A
        request given up on (its 504, or the client gone) stops its generation at the next token."""
        cancel = threading.Event()
        try:
            if _batchable(m, sampling):
                return await m.gen_batcher.submit(loaded, Ask(messages, max_tokens, prompt, None, cancel))
            text, n_in, n_out = await asyncio.get_running_loop().run_in_executor(
                m.worker, lambda: generate(loaded, messages, max_tokens, prompt=prompt, sampling=sampling,
                                           cancel=cancel))
        except asyncio.CancelledError:
            cancel.set()
            metrics.cancelled.inc()
            raise
        return Answer(text, n_in, n_out, None)

    async def _check_prompt(loaded, messages, prompt, where: str) -> None:
        """Every generation route's input is bounded in tokens too (`serve.max_input_tokens`), as the model
        renders it; counted off the event loop."""
        if not sp.max_input_tokens:
            return
        n = await asyncio.get_running_loop().run_in_executor(checker, prompt_tokens, loaded, messages, prompt)
        if n > sp.max_input_tokens:
            raise HTTPException(413, f"{where}: {n} tokens, over {sp.max_input_tokens}")

    def _honourable(req: SamplingFields) -> None:
        refused = req.unhonoured()
        if refused:
            raise HTTPException(400, f"{refused[0]}: {refused[1]}")

    async def _json_answer(m: ServedModel, loaded, messages, max_tokens, sampling):
        """`response_format: json_object`, validated and retried: the answer must parse as one JSON object;
        if it does not, one retry sampling at temperature 0.7 (seeded), then the upstream if there is
        one; else 422. Returns (text, prompt tokens, completion tokens, route)."""
        first = await _generate(m, loaded, messages, None, max_tokens, sampling)
        if is_json_object(first.text):
            return first, "local"
        retry = Sampling(0.7, 0.95, sampling.seed if sampling.seed is not None else 0, sampling.stop)
        again = await _generate(m, loaded, messages, None, max_tokens, retry)
        metrics.tokens.labels(m.name, "local").inc(first.prompt_tokens + first.completion_tokens)  # discarded, not free
        if is_json_object(again.text):
            return again, "local"
        if m.upstream is not None:
            body = await m.upstream.chat(messages, max_tokens, metrics)
            if body is not None:
                content = body.get("choices", [{}])[0].get("message", {}).get("content", "")
                if is_json_object(content):
                    usage = body.get("usage", {})
                    return Answer(content, usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0),
                                  None), "upstream"
        raise HTTPException(422, "response_format: the model did not produce a JSON object (after one retry)")

    slots = Slots(sp.max_queue)  # generations admitted at once (running or waiting for the model)

    async def _admit(handler):
        """Run a generation handler if a slot is free, else 429. A stream keeps its slot until it ends."""
        if not slots.take():
            return JSONResponse(error_body(429, "server busy: too many generations in progress, retry later"),
                                429, headers={"Retry-After": "1"})
        try:
            response = await handler()
        except BaseException:
            slots.give()
            raise
        if not isinstance(response, StreamingResponse):
            slots.give()
        return response

    @app.post("/v1/chat/completions", responses=_documented(400, *COMMON_ERRORS))
    async def chat(req: ChatRequest, request: Request):
        return await _admit(lambda: _chat(req, request))

    async def _chat(req: ChatRequest, request: Request):
        m = pick(req.model, request)
        _honourable(req)
        loaded = served(m)
        _answers(m, loaded, "/v1/chat/completions")
        messages = [m.model_dump() for m in req.messages]
        max_tokens = _max_tokens(req.max_tokens)
        if sum(len(m["content"]) for m in messages) > sp.max_chars:
            raise HTTPException(413, f"messages: over {sp.max_chars} characters")
        await _check_prompt(loaded, messages, None, "messages")
        flag = None
        if m.upstream is not None and matches_ood(m.fallback.ood_patterns, messages) and not req.stream:
            body = await m.upstream.chat(messages, max_tokens, metrics)
            if body is not None:
                return reply({**body, "route": "upstream"}, loaded)
            flag = "upstream failed; answered locally"
        sampling = req.sampling()
        json_mode = req.response_format is not None and req.response_format.type == "json_object"
        if req.stream and json_mode:
            raise HTTPException(422, "response_format: json_object cannot be streamed (the answer is validated "
                                     "whole before it is sent)")
        if req.stream:
            return _stream(m, loaded, messages, None, max_tokens, "chat.completion.chunk", sampling,
                           bool(req.stream_options and req.stream_options.include_usage))
        route = "local"
        if json_mode:
            answer, route = await _json_answer(m, loaded, messages, max_tokens, sampling)
        else:
            answer = await _generate(m, loaded, messages, None, max_tokens, sampling)
        if route == "local" and unsure(m, answer):
            body = await m.upstream.chat(messages, max_tokens, metrics)
            if body is not None and (not json_mode or is_json_object(
                    body.get("choices", [{}])[0].get("message", {}).get("content", ""))):
                spent = answer.prompt_tokens + answer.completion_tokens
                metrics.tokens.labels(m.name, "local").inc(spent)  # the discarded local answer's, spent anyway
                return reply({**body, "route": "upstream", "local_mean_logprob": round(answer.mean_logprob, 4)}, loaded)
            flag = "upstream failed; answered locally"
        text, n_in, n_out = answer[:3]
        if route == "local":  # the upstream client counts its own requests and tokens
            metrics.routed.labels(m.name, "local").inc()
            metrics.tokens.labels(m.name, "local").inc(n_in + n_out)
        body = {"id": completion_id(), "object": "chat.completion", "created": int(time.time()), "model": m.name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": "length" if n_out >= max_tokens else "stop"}],
                "usage": {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out},
                "route": route}
        if flag:
            body["fallback_error"] = flag
        return reply(body, loaded)

    @app.post("/v1/completions", responses=_documented(400, *COMMON_ERRORS))
    async def completions(req: CompletionRequest, request: Request):
        return await _admit(lambda: _completions(req, request))

    async def _completions(req: CompletionRequest, request: Request):
        m = pick(req.model, request)
        _honourable(req)
        loaded = served(m)
        _answers(m, loaded, "/v1/completions")
        if len(req.prompt) > sp.max_chars:
            raise HTTPException(413, f"prompt: over {sp.max_chars} characters")
        await _check_prompt(loaded, None, req.prompt, "prompt")
        max_tokens = _max_tokens(req.max_tokens)
        if req.stream:
            return _stream(m, loaded, None, req.prompt, max_tokens, "text_completion", req.sampling(),
                           bool(req.stream_options and req.stream_options.include_usage))
        text, n_in, n_out, _ = await _generate(m, loaded, None, req.prompt, max_tokens, req.sampling())
        metrics.tokens.labels(m.name, "local").inc(n_in + n_out)
        return reply({"id": completion_id(), "object": "text_completion", "created": int(time.time()), "model": m.name,
                      "choices": [{"index": 0, "text": text, "finish_reason": "length" if n_out >= max_tokens else "stop"}],
                      "usage": {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out},
                      "route": "local"}, loaded)

    def _stream(m: ServedModel, loaded, messages, prompt, max_tokens, kind: str, sampling=GREEDY, usage: bool = False):
        """Server-sent events that always end with `data: [DONE]`: after the answer (and its usage), or after
        an error event (`data: {"error": ...}`) when the generation fails, its first token takes longer than
        `serve.stream_first_token_s`, two tokens are further apart than `stream_idle_s`, or the stream runs
        past `stream_total_s`; the generation is then stopped. A client that goes away stops it too."""
        from transformers import TextIteratorStreamer

        streamer = TextIteratorStreamer(loaded.tok, skip_prompt=True, skip_special_tokens=True)
        cancel = threading.Event()  # set when the stream ends early: the model stops at its next token
        if _batchable(m, sampling):  # a failure ends the streamer
            answer = m.gen_batcher.submit(loaded, Ask(messages, max_tokens, prompt, streamer, cancel))
        else:
            def run():
                try:
                    return generate(loaded, messages, max_tokens, prompt, streamer, sampling, cancel)
                except BaseException as err:
                    failed(streamer, err)
                    streamer.end()  # the stream learns of the failure now, not at its idle limit
                    raise
            answer = asyncio.wrap_future(m.worker.submit(run))
        answer.add_done_callback(lambda f: f.cancelled() or f.exception())  # read below, never "never retrieved"
        cid, created = completion_id(), int(time.time())

        def chunk(piece: str | None, finish: str | None, counts: tuple | None = None) -> str:
            if counts is not None:  # the usage chunk: no choices (OpenAI's include_usage)
                extra: dict[str, Any] = {"choices": [], "usage": {
                    "prompt_tokens": counts[1], "completion_tokens": counts[2], "total_tokens": counts[1] + counts[2]}}
            elif kind == "text_completion":
                extra = {"choices": [{"index": 0, "text": piece or "", "finish_reason": finish}]}
            else:
                extra = {"choices": [{"index": 0, "delta": {"content": piece} if piece else {}, "finish_reason": finish}]}
            return "data: " + json.dumps({"id": cid, "object": kind, "created": created, "model": m.name,
                                          "model_version": loaded.version, **extra}) + "\n\n"

        async def pieces():
            """The answer's text pieces, then None; raises TimeoutError naming the limit it passed."""
            loop = asyncio.get_running_loop()
            iterator, started, first = iter(streamer), loop.time(), True
            while True:
                left = sp.stream_total_s - (loop.time() - started)
                wait = sp.stream_first_token_s if first else sp.stream_idle_s
                if left <= 0:
                    raise TimeoutError(f"the stream ran past serve.stream_total_s ({sp.stream_total_s:g} s)")
                streamer.timeout = min(wait, left)
                try:
                    piece = await loop.run_in_executor(None, next, iterator, None)
                except queue.Empty:
                    if wait > left:
                        raise TimeoutError(f"the stream ran past serve.stream_total_s ({sp.stream_total_s:g} s)") \
                            from None
                    raise TimeoutError(f"no first token within serve.stream_first_token_s ({wait:g} s)" if first
                                       else f"no token for serve.stream_idle_s ({wait:g} s)") from None
                if piece is None:
                    return
                if piece:
                    first = False
                    yield piece

        async def events():
            ended = False
            try:
                try:
                    async for piece in pieces():
                        yield chunk(piece, None)
                    if failed(streamer) is not None:
                        raise failed(streamer)
                    counts = (await answer) if usage else None  # a batched row's come when its batch is done
                except Exception as err:  # the generation failed, or a limit passed: said, then [DONE]
                    cancel.set()
                    metrics.cancelled.inc()
                    code = 504 if isinstance(err, TimeoutError) else 500
                    message = str(err) if code == 504 else f"the generation failed: {type(err).__name__}: {err}"
                    yield "data: " + json.dumps(error_body(code, message[:500])) + "\n\n"
                    yield "data: [DONE]\n\n"
                    ended = True
                    return
                finish = "length" if counts and counts[2] >= max_tokens else "stop"
                yield chunk(None, finish)
                if usage:
                    yield chunk(None, None, counts)
                yield "data: [DONE]\n\n"
                ended = True
            finally:  # finished, failed or the client went away: the slot is free again
                if not ended:
                    cancel.set()
                    metrics.cancelled.inc()
                slots.give()

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"X-Model-Version": str(loaded.version), "Cache-Control": "no-cache"})

    routes = {route.path for route in app.routes if hasattr(route, "path")}
    app.add_middleware(Guard, sp=sp, app_state=app.state, metrics=metrics, routes=routes)


def create_app(params: Params, alias: str = "champion", model: str | None = None, batching: bool = True,
               poll: bool = True, models: dict[str, Params] | None = None, folders: dict[str, Path] | None = None,
               broken: dict[str, str] | None = None):
    """Build the ASGI app. It serves the `alias` version of one model (`model`, else the params'
    registry.model_name) or, given `models` (name -> that model's params: its registry, keys and
    fallback), of each of them, chosen per request by the OpenAI `model` field; each follows its own
    alias, on its own worker thread, behind its own API keys. The server's own settings (address,
    limits) are `params.serve`. `folders` (name -> the model's folder): where relative registry paths
    start and whose git keeps the registry's heads. With several models, one that cannot be set up
    (its keys file missing) is reported in /readyz and skipped, like those in `broken` (name -> why)."""
    from fastapi import FastAPI

    from pipelines.core.errors import PipelineError
    from pipelines.registry import access
    from pipelines.serving.fallback import Upstream

    sp = params.serve
    models = models if models is not None else {model or params.registry.model_name: params}
    broken = dict(broken or {})
    metrics = Metrics()
    checker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="request-check")  # token counts, off the loop
    served: dict[str, ServedModel] = {}
    for name, own in models.items():
        folder = (folders or {}).get(name)
        keys_file = own.serve.api_keys_file
        if keys_file and folder is not None and not Path(keys_file).expanduser().is_absolute():
            keys_file = str(folder / keys_file)  # a model's own settings are relative to its folder
        try:
            keys = tuple(api_keys(own.serve.api_keys_env, keys_file))
            store = access.model_store(own, name, folder)
        except PipelineError as err:
            if len(models) == 1:
                raise
            broken[name] = str(err)  # fail closed for this model (never served without its keys)
            continue
        worker = Worker(name)
        served[name] = ServedModel(
            name, Holder(store, alias, metrics, name), worker,
            Batcher(sp.max_batch, sp.max_wait_ms, sp.max_queue, worker, metrics) if batching else None,
            GenerationBatcher(sp.max_generation_batch, worker, metrics, sp.generation_wait_ms) if batching else None,
            Upstream.from_params(own.serve.fallback, name, own.cost.api.get(own.serve.fallback.model)),
            own.serve.fallback, keys)
    if not served:
        from pipelines.core.errors import ConfigError

        raise ConfigError("no model can be served: " + "; ".join(f"{n}: {why}" for n, why in broken.items()))

    async def lifespan(app):
        loop = asyncio.get_running_loop()
        for m in served.values():
            await loop.run_in_executor(m.worker, m.holder.poll)
            if poll:
                m.holder.start(sp.poll_seconds)
        tasks = [asyncio.create_task(b.run()) for m in served.values() for b in (m.batcher, m.gen_batcher) if b]
        yield
        for m in served.values():
            m.holder.stop()
            m.worker.shutdown(wait=False, cancel_futures=True)
        for task in tasks:
            task.cancel()
        checker.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="pipelines serving", version="1", lifespan=lifespan)
    app.state.keys = sorted({k for m in served.values() for k in m.keys})  # any model's: for the server's routes
    app.state.open_model = any(not m.keys for m in served.values())  # a model that asks for no key
    app.state.broken = broken
    app.state.model_keys = {name: m.keys for name, m in served.items()}
    install_routes(app, sp, served, metrics, checker, broken)
    return app
