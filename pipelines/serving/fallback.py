"""Hybrid routing: send the hard remainder to a stronger OpenAI-compatible upstream.

Inputs: `serve.fallback` params (url, API key env var, model, confidence threshold, out-of-domain
patterns, timeout). Outputs: rerouted classification results and chat completions marked
`route: upstream`, per-route request and token counters; when the upstream fails, the local answer
stands and carries `fallback_error`.
"""
from __future__ import annotations

import logging
import os
from typing import Any

log = logging.getLogger("pipelines.serving.engine")


DEFAULT_THRESHOLD = 0.5  # `classify_threshold: tuned` for a version whose evaluation tuned none


class Upstream:
    def __init__(self, url: str, key: str | None, model: str, threshold: float | str, timeout: float,
                 served: str = "", price=None) -> None:
        self.url, self.key, self.model, self.threshold, self.timeout = url.rstrip("/"), key, model, threshold, timeout
        self.served, self.price = served, price  # the served model's name (metric label); the API's ApiPrice

    @classmethod
    def from_params(cls, fb, served: str = "", price=None) -> "Upstream | None":
        if not fb.url:
            return None
        return cls(fb.url, os.environ.get(fb.api_key_env), fb.model, fb.classify_threshold, fb.timeout_s,
                   served, price)

    def threshold_for(self, loaded) -> float:
        """A hand-set threshold, else the one the served version's evaluation tuned, else 0.5."""
        if isinstance(self.threshold, (int, float)):
            return float(self.threshold)
        return loaded.route_threshold if loaded.route_threshold is not None else DEFAULT_THRESHOLD

    async def _post(self, messages: list[dict], max_tokens: int) -> dict[str, Any]:
        import httpx

        headers = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        async with httpx.AsyncClient(timeout=self.timeout) as client:
            r = await client.post(f"{self.url}/v1/chat/completions", headers=headers,
                                  json={"model": self.model, "messages": messages, "max_tokens": max_tokens})
            r.raise_for_status()
            body = r.json()
            body["choices"][0]["message"]["content"]  # noqa: B018 - shape check
            return body

    def _count(self, body: dict, metrics) -> None:
        usage = body.get("usage") or {}
        metrics.routed.labels(self.served, "upstream").inc()
        metrics.tokens.labels(self.served, "upstream").inc(int(usage.get("total_tokens", 0)))
        if self.price is not None:
            metrics.cost.labels(self.served, "upstream").inc(
                (int(usage.get("prompt_tokens", 0)) * self.price.usd_per_1m_input
                 + int(usage.get("completion_tokens", 0)) * self.price.usd_per_1m_output) / 1e6)

    async def chat(self, messages: list[dict], max_tokens: int, metrics) -> dict | None:
        try:
            body = await self._post(messages, max_tokens)
        except Exception as err:
            log.error("fallback upstream failed (%s); answering locally", type(err).__name__)
            return None
        self._count(body, metrics)
        return body

    async def classify(self, text: str, labels: list[str]) -> tuple[str | None, dict | None, str | None]:
        """The upstream's label for `text` (one of `labels`), its response body, or why there is none."""
        prompt = [{"role": "system", "content": "Classify the user's message. Answer with exactly one label from: "
                   + ", ".join(labels)}, {"role": "user", "content": text}]
        try:
            body = await self._post(prompt, 16)
            answer = body["choices"][0]["message"]["content"].strip()
        except Exception as err:
            return None, None, f"upstream failed ({type(err).__name__}); local answer kept"
        if answer not in labels:
            return None, body, "upstream answered an unknown label; local answer kept"
        return answer, body, None

    async def reroute_low_confidence(self, texts: list[str], results: list[dict], loaded, metrics) -> None:
        """Ask the upstream to classify each text whose top score is under the threshold."""
        labels, threshold = loaded.labels, self.threshold_for(loaded)
        for text, result in zip(texts, results):
            if result["score"] >= threshold:
                continue
            answer, body, error = await self.classify(text, labels)
            if error:
                result["fallback_error"] = error
                continue
            self._count(body, metrics)
            result.update(label=answer, route="upstream", local_label=result["label"], local_score=result["score"])
