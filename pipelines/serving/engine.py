"""Serving: an OpenAI-compatible FastAPI server for the version a registry alias points at.

Inputs: the registry (`registry` params), the alias to follow and the `serve` params. Outputs: the
engine (model holder, batcher, metrics, auth, the uvicorn protocol guard) that the routes and the
app factory in `serve_api.py` (`create_app`) use; `pipelines serve` runs that app with uvicorn.
- `POST /v1/classify` (batch of texts -> label, score, top-k), `POST /v1/chat/completions` and
  `POST /v1/completions` (causal LMs; SSE streaming), `GET /v1/models`, `/healthz`, `/readyz`,
  `/metrics` (Prometheus). Every response names the model version (field and `X-Model-Version`).
- Zero-downtime swap: a watcher polls the alias; a new version is loaded and warmed beside the
  old one, then one reference is swapped. Requests capture the version at arrival, so in-flight
  work finishes on it. A version that fails to load or warm is skipped until the alias moves again.
- Classification micro-batching: requests are gathered for up to `max_wait_ms` or `max_batch`
  texts and run in one forward pass per version; the queue is bounded (429 when full).
- Limits and security: API keys (constant-time comparison; /healthz and /readyz open), bounded
  body, texts per request, characters, input tokens and max_tokens, a request timeout.
- Hybrid routing: low-confidence classifications and out-of-domain chats go to a configured
  OpenAI-compatible upstream; if it fails the local answer is returned with a flag.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import re
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.tasks import task_spec

log = logging.getLogger("pipelines.serving.engine")


@dataclass
class Loaded:
    version: int
    task: str
    model: Any
    tok: Any  # used only by the forward thread
    labels: list[str] | None
    max_length: int
    count_tok: Any = None  # a private copy for request checks: a tokenizer's truncation state is not thread-safe
    route_threshold: float | None = None  # hybrid routing's threshold tuned by the version's evaluation


def load_version(store, version: int) -> Loaded:
    """Load a registered version, only as the registry vouches for it: the version's files and its base
    model are copied into a private folder, each byte hashed as it is copied, and loaded from there only
    if they are the ones the (ledger-checked) manifest names (`registry.private_copy`) and its
    `base_hash` records; a file swapped on disk during or after the check is never what is loaded."""
    import copy
    import tempfile

    from pipelines.core.hashing import copy_tree_hashed
    from pipelines.registry import store as registry
    from pipelines.training import batching
    from pipelines.training.modeling import load_trained, trained_base

    reg = registry.registered(registry.read_ledger(store)).get(version)
    if reg is None:
        raise RuntimeError(f"v{version} is not registered")
    with tempfile.TemporaryDirectory(prefix="pipelines-serve-") as private:  # mode 0700: ours alone
        directory = Path(private) / "files"
        manifest = registry.private_copy(store, version, reg, directory)
        base = Path(private) / "base"
        if copy_tree_hashed(trained_base(directory), base)[0] != manifest.get("base_hash"):
            raise RuntimeError(f"v{version}: its base model is not the one it was trained on (content hash differs "
                               "from the manifest's base_hash)")
        config = json.loads((directory / "train_config.json").read_text(encoding="utf-8"))
        model, tok = load_trained(directory, base=base)
        labels = None
        if task_spec(config["task"]).labelled:
            label_map = json.loads((directory / "label_map.json").read_text(encoding="utf-8"))
            labels = sorted(label_map, key=label_map.get)
        else:
            batching.ensure_chat_template(tok)
    routing = registry.read_evidence(store, version, ROUTING_EVIDENCE, manifest)
    return Loaded(version, config["task"], model, tok, labels, int(config["params"]["max_length"]),
                  count_tok=copy.deepcopy(tok), route_threshold=tuned_threshold(routing))


ROUTING_EVIDENCE = "evaluate_routing.json"  # evaluate's routing.json, as a promotion names it


def tuned_threshold(blob: bytes | None) -> float | None:
    """The routing threshold a version's evaluation chose (its routing evidence, checked against the
    manifest by `verify_version`), or None when it has none."""
    threshold = json.loads(blob).get("threshold") if blob else None
    return float(threshold) if isinstance(threshold, (int, float)) else None


def classify(loaded: Loaded, texts: list[str]):
    """Probabilities for a batch of texts (one forward pass), through the path `evaluate` measured."""
    from pipelines.inference import predict

    return predict.classify(loaded.model, loaded.tok, texts, loaded.max_length)


def warm_up(loaded: Loaded) -> None:
    """Fail loudly unless the model answers sanely."""
    import numpy as np

    if task_spec(loaded.task).labelled:
        probs = classify(loaded, ["warm-up request", "is this model alive?"])
        if probs.shape != (2, len(loaded.labels)) or not np.isfinite(probs).all():
            raise RuntimeError(f"warm-up produced {probs.shape} non-finite or misshapen scores")
    else:
        generate(loaded, [{"role": "user", "content": "hello"}], max_tokens=1)


def generate(loaded: Loaded, messages: list[dict] | None, max_tokens: int, prompt: str | None = None,
             streamer=None, sampling=None, cancel=None) -> tuple[str, int, int]:
    """Generation through the path `evaluate` measured (greedy unless `sampling` says otherwise; ended
    early when the `cancel` event is set); returns (text, prompt_tokens, completion_tokens)."""
    from pipelines.inference import predict

    return predict.generate(loaded.model, loaded.tok, messages, max_tokens, prompt=prompt, streamer=streamer,
                            sampling=sampling or predict.GREEDY, cancel=cancel)


class Worker(ThreadPoolExecutor):
    """One model's forward thread: its jobs run one at a time, and it knows how long the current one has
    been running (`/healthz` says 503 when that is longer than `serve.stuck_after_s`). Each served model
    has its own, so a slow generation of one model never holds up another."""

    def __init__(self, name: str) -> None:
        super().__init__(max_workers=1, thread_name_prefix=f"forward-{name}")
        self.since: float | None = None

    def submit(self, fn, /, *args, **kwargs):
        def timed():
            self.since = time.monotonic()
            try:
                return fn(*args, **kwargs)
            finally:
                self.since = None
        return super().submit(timed)

    def busy_for(self) -> float:
        since = self.since
        return 0.0 if since is None else time.monotonic() - since


def prompt_tokens(loaded: Loaded, messages: list[dict] | None, prompt: str | None) -> int:
    """How many tokens a chat (as the model's template renders it) or a raw prompt takes, counted with
    the version's own copy of the tokenizer (never the forward thread's)."""
    tok = loaded.count_tok or loaded.tok
    text = prompt if prompt is not None else tok.apply_chat_template(messages, tokenize=False,
                                                                     add_generation_prompt=True)
    return len(tok(text, add_special_tokens=False, truncation=False)["input_ids"])


class Slots:
    """A bounded count of requests in progress (the event loop's thread only: no lock needed)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0

    def take(self) -> bool:
        if self.used >= self.limit:
            return False
        self.used += 1
        return True

    def give(self) -> None:
        self.used = max(0, self.used - 1)


class Holder:
    """The served version and the watcher that swaps it when the alias moves.

    A version that fails to load or warm up is not retried until the ledger changes (a new entry:
    the alias moved away and back, or a repair was recorded), so a broken version costs one attempt."""

    def __init__(self, store, alias: str, metrics, name: str = "") -> None:
        self.store, self.alias, self.metrics = store, alias, metrics
        self.name = name or store.base.rsplit("/", 1)[-1]
        self.current: Loaded | None = None
        self.failed: tuple[int, str] | None = None  # (version, ledger tip hash) of the last failed load
        self.status = "loading"
        self._said: str | None = None
        self._stop = threading.Event()

    def _say(self, level: int, message: str) -> None:
        """Log a state once, not on every poll."""
        if message != self._said:
            log.log(level, message)
            self._said = message
        self.status = message

    def poll(self) -> None:
        from pipelines.registry import store as registry

        try:
            entries = registry.read_ledger(self.store)
        except Exception as err:  # an unreadable ledger must not take serving down, nor be trusted
            self._say(logging.ERROR, f"cannot read the registry ledger: {err}; still serving "
                      f"{self.current.version if self.current else 'nothing'}")
            return
        current = registry.aliases(entries)
        target = current.get(self.alias)
        tip = entries[-1]["hash"] if entries else ""
        if target is None:
            self._say(logging.ERROR, f"alias '{self.alias}' is not set for {self.store.base.rsplit('/', 1)[-1]} "
                      f"(aliases: {', '.join(sorted(current)) or 'none'}); serving "
                      f"{'v%s' % self.current.version if self.current else 'nothing'} until it is")
            return
        if self.current and self.current.version == target:
            return
        if self.failed == (target, tip):
            return
        try:
            candidate = load_version(self.store, target)
            warm_up(candidate)
        except Exception as err:
            self.failed = (target, tip)
            self.metrics.load_failures.inc()
            self._say(logging.ERROR, f"version {target} failed to load or warm up; still serving "
                      f"{self.current.version if self.current else None}: {err}")
            return
        self.current = candidate  # one reference swap: requests already holding the old one finish on it
        self.failed = None
        self.metrics.version.labels(self.name).set(target)
        self._say(logging.WARNING, f"now serving {self.alias} v{target}")

    def start(self, interval: float) -> None:
        def loop():
            while not self._stop.wait(interval):
                self.poll()
        threading.Thread(target=loop, name="alias-watcher", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()


class Metrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("pipelines_requests_total", "Requests by route and status", ["path", "status"],
                                registry=self.registry)
        self.latency = Histogram("pipelines_request_seconds", "Request latency", ["path"], registry=self.registry,
                                 buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
        self.batch = Histogram("pipelines_batch_size", "Texts per forward pass", registry=self.registry,
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128))
        self.version = Gauge("pipelines_model_version", "Registry version being served", ["model"],
                             registry=self.registry)
        self.load_failures = Counter("pipelines_model_load_failures_total", "Versions that failed to load or warm",
                                     registry=self.registry)
        self.routed = Counter("pipelines_route_requests_total", "Requests (texts) by model and serving route",
                              ["model", "route"], registry=self.registry)
        self.tokens = Counter("pipelines_route_tokens_total", "Tokens by model and serving route", ["model", "route"],
                              registry=self.registry)
        self.cost = Counter("pipelines_route_cost_usd_total", "Upstream API spend by model, its usage at the "
                            "`cost.api` list price (the local route's cost is the machine's hours)",
                            ["model", "route"], registry=self.registry)
        self.generation_batch = Histogram("pipelines_generation_batch_size", "Generations per batched generate",
                                          registry=self.registry, buckets=(1, 2, 4, 8, 16, 32, 64))
        self.cancelled = Counter("pipelines_generations_cancelled_total",
                                 "Generations stopped early: the client went away, or a stream's or request's "
                                 "time limit passed", registry=self.registry)


class QueueFull(Exception):
    pass


async def gather(queue: asyncio.Queue, jobs: list, room, wait: float) -> None:
    """Add to `jobs` what already waits in `queue` (it queued up during the last forward pass), then
    for up to `wait` seconds what arrives, while `room()` holds. Batchers wait only under load (the
    last batch had company): an idle server answers a lone request at once."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while room():
        if not queue.empty():
            jobs.append(queue.get_nowait())
            continue
        remaining = deadline - loop.time()
        if remaining <= 0:
            return
        try:
            jobs.append(await asyncio.wait_for(queue.get(), remaining))
        except asyncio.TimeoutError:
            return


@dataclass
class _Job:
    loaded: Loaded
    texts: list[str]
    future: asyncio.Future
    t: float = field(default_factory=time.perf_counter)


class _GroupBatcher:
    """The loop both batchers share: take a job, gather what else waits (and, under load, what arrives
    within `max_wait`), then one `_answer` per registry version on the model's worker thread, each
    job's future resolved with its own result (or the batch's error)."""

    max_batch: int
    max_wait: float
    executor: Any
    queue: asyncio.Queue | None = None

    def _room(self, jobs: list) -> bool:
        raise NotImplementedError

    def _answer(self, group: list) -> list:
        """One result per job of `group` (all of one version); runs on the executor."""
        raise NotImplementedError

    async def run(self) -> None:
        self.queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        busy = False
        while True:
            jobs = [await self.queue.get()]
            await gather(self.queue, jobs, lambda: self._room(jobs), self.max_wait if busy else 0.0)
            busy = len(jobs) > 1
            by_version: dict[int, list] = {}
            for job in jobs:
                by_version.setdefault(job.loaded.version, []).append(job)
            for group in by_version.values():
                try:
                    results = await loop.run_in_executor(self.executor, self._answer, group)
                except Exception as err:
                    for job in group:
                        if not job.future.done():
                            job.future.set_exception(err)
                    continue
                for job, result in zip(group, results):
                    if not job.future.done():
                        job.future.set_result(result)


class Batcher(_GroupBatcher):
    """Gathers classification requests for up to max_wait_ms / max_batch texts, one forward per version."""

    def __init__(self, max_batch: int, max_wait_ms: float, max_queue: int, executor, metrics) -> None:
        self.max_batch, self.max_wait, self.max_queue = max_batch, max_wait_ms / 1000, max_queue
        self.executor, self.metrics = executor, metrics
        self.pending = 0

    async def submit(self, loaded: Loaded, texts: list[str]):
        if self.pending >= self.max_queue:
            raise QueueFull()
        self.pending += 1
        try:
            job = _Job(loaded, texts, asyncio.get_running_loop().create_future())
            await self.queue.put(job)
            return await job.future
        finally:
            self.pending -= 1

    def _room(self, jobs: list) -> bool:
        return sum(len(j.texts) for j in jobs) < self.max_batch

    def _answer(self, group: list) -> list:
        texts = [t for job in group for t in job.texts]
        self.metrics.batch.observe(len(texts))
        probs = classify(group[0].loaded, texts)
        out, at = [], 0
        for job in group:
            out.append(probs[at:at + len(job.texts)])
            at += len(job.texts)
        return out


@dataclass
class _GenJob:
    loaded: Loaded
    ask: Any  # predict.Ask
    future: asyncio.Future


def generate_batch(loaded: Loaded, asks: list) -> list:
    """`predict.generate_batch` on a loaded version: one `predict.Answer` per ask."""
    from pipelines.inference import predict

    return predict.generate_batch(loaded.model, loaded.tok, asks)


class GenerationBatcher(_GroupBatcher):
    """Static batching of greedy generations: whatever waits when the model's worker is free (up to
    `max_batch` requests of one version) runs as one left-padded `generate`; each answer ends at its
    own EOS, token limit or cancel event. Under load the queue fills while a batch runs and the next
    batch also gathers for up to `max_wait_ms` (its clients send their next requests as the last batch
    ends: better than a batch of one that makes them wait a whole generation); an idle server answers
    a lone request at once."""

    def __init__(self, max_batch: int, executor, metrics, max_wait_ms: float = 0.0) -> None:
        self.max_batch, self.executor, self.metrics = max_batch, executor, metrics
        self.max_wait = max_wait_ms / 1000

    def submit(self, loaded: Loaded, ask) -> asyncio.Future:
        """Queue one request; the future resolves to its `predict.Answer` (text, prompt and completion
        tokens, mean token log-probability)."""
        job = _GenJob(loaded, ask, asyncio.get_running_loop().create_future())
        self.queue.put_nowait(job)
        return job.future

    def _room(self, jobs: list) -> bool:
        return len(jobs) < self.max_batch

    def _answer(self, group: list) -> list:
        self.metrics.generation_batch.observe(len(group))
        return generate_batch(group[0].loaded, [job.ask for job in group])


def api_keys(env_var: str, keys_file: str | None) -> list[str]:
    """Keys from the environment variable and the keys file; a configured file must exist (fail closed)."""
    from pipelines.core.errors import ConfigError

    keys = [k.strip() for k in os.environ.get(env_var, "").split(",") if k.strip()]
    if keys_file:
        try:
            text = Path(keys_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"serve.api_keys_file {keys_file} cannot be read ({type(err).__name__}); "
                              "refusing to start without the keys it should hold") from None
        keys += [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
        if not keys:
            raise ConfigError(f"serve.api_keys_file {keys_file} holds no keys; refusing to start unauthenticated")
    return keys


LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def auth_line(keys: dict[str, tuple[str, ...]], host: str, allow_unauthenticated: bool) -> str:
    """The one start-up line about authentication (`keys`: each served model's own API keys); refuses a
    model without keys on a non-loopback address."""
    from pipelines.core.errors import ConfigError

    open_models = sorted(name for name, own in keys.items() if not own)
    if not open_models:
        n = len({k for own in keys.values() for k in own})
        return f"authentication: on ({n} API key{'s' if n != 1 else ''})"
    which = "" if len(keys) == 1 else f" for {', '.join(open_models)}"
    if host not in LOOPBACK and not host.startswith("127.") and not allow_unauthenticated:
        raise ConfigError(f"refusing to serve{which} on {host} without API keys: set serve.api_keys_env / "
                          "api_keys_file, or serve.allow_unauthenticated: true (--allow-unauthenticated)")
    return f"authentication: OFF{which} (no API keys configured; listening on {host})"


def server_config(app, sp, host: str, port: int):
    """uvicorn's config with the limits a public server needs: at most `max_connections` connections (the
    oldest idle one makes room for a new one), at most `max_connections_per_client` from one address, and
    `header_timeout_s` to send a request's headers (the body is bounded by the app's request timeout)."""
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                          http=_guarded_protocol(sp.header_timeout_s, sp.max_connections,
                                                 sp.max_connections_per_client),
                          limit_concurrency=sp.max_connections + 1, timeout_keep_alive=5)


def _guarded_protocol(header_timeout: float, max_connections: int, per_client: int):
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as Base
    except ImportError:  # httptools is optional for uvicorn
        from uvicorn.protocols.http.h11_impl import H11Protocol as Base

    def idle(conn) -> bool:  # no request in progress: never sent one, or its last answer is complete
        return conn.cycle is None or conn.cycle.response_complete

    class Guarded(Base):
        """Makes room for each new connection by closing the oldest idle one (first of its own address,
        when that address is at its limit; a new connection with no idle one to replace is closed), and
        closes connections that do not finish their headers in time: idle or slow connections, however
        many, never lock a client out."""

        _timer = None
        opened = 0.0

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self.opened = self.loop.time()
            mine = [c for c in self.connections if c.client and self.client and c.client[0] == self.client[0]]
            for crowd, limit in ((mine, per_client), (self.connections, max_connections)):
                if len(crowd) > limit and not self._evict(crowd):
                    transport.close()
                    return
            self._arm()

        def _evict(self, crowd) -> bool:
            """Close the oldest idle connection of `crowd` other than this one; False when there is none."""
            victims = [c for c in crowd if c is not self and idle(c) and not c.transport.is_closing()]
            if not victims:
                return False
            oldest = min(victims, key=lambda c: c.opened)
            oldest.connections.discard(oldest)  # counted out now; uvicorn forgets it when the close lands
            oldest.transport.close()
            return True

        def data_received(self, data: bytes) -> None:
            if self._timer is None and (self.cycle is None or self.cycle.response_complete):
                self._arm()  # a new request starts on a kept-alive connection
            super().data_received(data)

        def connection_lost(self, exc) -> None:
            if self._timer is not None:
                self._timer.cancel()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._timer = self.loop.call_later(header_timeout, self._expire, self.cycle)

        def _expire(self, cycle_before) -> None:
            self._timer = None
            waiting = self.cycle is cycle_before or self.cycle is None or self.cycle.response_complete
            if waiting and not self.transport.is_closing():
                self.transport.close()  # no complete request headers within header_timeout_s

    return Guarded


def check_key(keys: list[str], header: str | None) -> bool:
    if not keys:
        return True
    presented = (header or "").removeprefix("Bearer ").strip()
    ok = False
    for key in keys:  # compare against every key, constant time, no early exit
        ok |= hmac.compare_digest(presented.encode(), key.encode())
    return ok


def matches_ood(rules: tuple[str, ...], messages: list[dict]) -> bool:
    text = "\n".join(str(m.get("content", "")) for m in messages if m.get("role") == "user")
    return any(re.search(rule, text, flags=re.IGNORECASE) for rule in rules)


def wait_ready(url: str, timeout: float = 120.0, proc=None) -> None:
    """Poll `url/readyz` until the server has a warm model; raise if it exits or times out."""
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode}")
        time.sleep(0.2)
    raise TimeoutError(f"server at {url} not ready after {timeout:.0f}s")


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"
