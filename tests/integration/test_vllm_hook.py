"""The vLLM promotion hook against a small fake of vLLM's runtime-LoRA endpoints on loopback."""
import pytest
from fastapi import FastAPI, HTTPException

from pipelines.core.errors import CheckFailed
from pipelines.serving.vllm import promote_to_vllm
from tests.serving_support import start_loopback


class FakeVLLM:
    def __init__(self, inplace: bool = True, refuse: str | None = None):
        self.adapters: dict[str, str] = {}
        self.calls: list[tuple[str, dict]] = []
        app = FastAPI()

        @app.get("/v1/models")
        async def models():
            return {"object": "list", "data": [{"id": "base"}] + [{"id": n} for n in self.adapters]}

        @app.post("/v1/load_lora_adapter")
        async def load(body: dict):
            self.calls.append(("load", body))
            if refuse and body["lora_name"] == refuse:
                raise HTTPException(400, "adapter rank exceeds --max-lora-rank")
            if body.get("load_inplace") and not inplace:
                raise HTTPException(400, "unknown field load_inplace")
            if body["lora_name"] in self.adapters and not body.get("load_inplace"):
                raise HTTPException(400, "adapter already loaded")
            self.adapters[body["lora_name"]] = body["lora_path"]
            return "ok"

        @app.post("/v1/unload_lora_adapter")
        async def unload(body: dict):
            self.calls.append(("unload", body))
            self.adapters.pop(body["lora_name"])
            return "ok"

        self.server, self.url = start_loopback(app)


@pytest.mark.parametrize("inplace", [True, False])
def test_promotion_loads_repoints_and_unloads_previous(inplace):
    fake = FakeVLLM(inplace=inplace)
    try:
        promote_to_vllm(fake.url, "text-gen", 1, "/srv/registry/text-gen/versions/v0001/files/adapter")
        assert fake.adapters == {"text-gen-v1": "/srv/registry/text-gen/versions/v0001/files/adapter",
                                 "text-gen": "/srv/registry/text-gen/versions/v0001/files/adapter"}
        promote_to_vllm(fake.url, "text-gen", 2, "/srv/v2/adapter", previous=1)
        assert fake.adapters == {"text-gen-v2": "/srv/v2/adapter", "text-gen": "/srv/v2/adapter"}
        assert ("unload", {"lora_name": "text-gen-v1"}) in fake.calls
    finally:
        fake.server.should_exit = True


def test_a_refused_adapter_keeps_the_served_one():
    fake = FakeVLLM(refuse="text-gen-v2")
    try:
        promote_to_vllm(fake.url, "text-gen", 1, "/v1/adapter")
        with pytest.raises(CheckFailed, match="max-lora-rank"):
            promote_to_vllm(fake.url, "text-gen", 2, "/v2/adapter", previous=1)
        assert fake.adapters["text-gen"] == "/v1/adapter" and "text-gen-v1" in fake.adapters
    finally:
        fake.server.should_exit = True
