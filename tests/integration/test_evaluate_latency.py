"""Latency as the gate sees it: the same model measured side by side with itself gives a ratio near 1,
even while another process keeps a core busy."""
from __future__ import annotations

import multiprocessing
import time

import pytest

from pipelines.stages.evaluate import latency_ms, paired_ratio
from tests.serving_support import build_registry

pytestmark = pytest.mark.integration


def _spin(seconds: float) -> None:
    end = time.time() + seconds
    while time.time() < end:
        pass


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_registry(tmp_path_factory.mktemp("latency"), "classification", versions=1)["candidates"][0][0]


def test_a_model_against_itself_is_within_the_ratio_while_a_neighbour_keeps_a_core_busy(model):
    texts = [f"my card number {i} has not arrived yet, what can I do" for i in range(12)]
    neighbours = [multiprocessing.Process(target=_spin, args=(40.0,))]
    for p in neighbours:
        p.start()
    try:
        (a, b), times = latency_ms([model, model], texts, 32, 12)
    finally:
        for p in neighbours:
            p.terminate()
    assert times.shape == (2, 12) and a["latency_p95_ms"] > 0 and b["latency_p95_ms"] > 0
    assert 1 / 1.25 < paired_ratio(times) < 1.25, times  # well inside the gate's default 1.5 for identical models
