import pytest
import torch

from pipelines.training import batching
from pipelines.training.batching import IGNORE, Example


@pytest.mark.parametrize("group", [True, False])
def test_batch_plan_covers_every_example_once_and_is_seeded(group):
    lengths = [(i * 37) % 50 + 1 for i in range(1000)]
    plan = batching.length_grouped_batches(lengths, 16, seed=3, group=group)
    assert sorted(i for b in plan for i in b) == list(range(1000))
    assert plan == batching.length_grouped_batches(lengths, 16, seed=3, group=group)
    assert plan != batching.length_grouped_batches(lengths, 16, seed=4, group=group)


def test_length_grouping_cuts_padding():
    lengths = [(i * 37) % 120 + 4 for i in range(3200)]

    def padded(plan):
        return sum(max(lengths[i] for i in b) * len(b) for b in plan)
    grouped = padded(batching.length_grouped_batches(lengths, 32, seed=0, group=True))
    naive = padded(batching.length_grouped_batches(lengths, 32, seed=0, group=False))
    assert grouped < 0.7 * naive


def test_packing_respects_max_length_and_keeps_every_example():
    lengths = [(i * 13) % 60 + 3 for i in range(500)]
    plan = batching.packed_batches(lengths, 64, rows_per_batch=4, seed=1)
    rows = [row for batch in plan for row in batch]
    assert sorted(i for row in rows for i in row) == list(range(500))
    assert all(sum(lengths[i] for i in row) <= 64 for row in rows)
    fill = sum(lengths) / (len(rows) * 64)
    assert fill > 0.9


def _tiny_lora_llama(impl: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    from pipelines.core.config import LoraParams
    from pipelines.training.modeling import attach_lora

    torch.manual_seed(0)
    model = LlamaForCausalLM._from_config(LlamaConfig(
        vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2), attn_implementation=impl)
    model = attach_lora(model, "causal_lm", LoraParams(r=4, alpha=8))
    for name, param in model.named_parameters():
        if "lora_B" in name:  # peft starts B at zero, which would leave every lora_A gradient zero
            torch.nn.init.normal_(param, std=0.1)
    return model


A = Example(list(range(3, 10)), list(range(3, 10)))
B = Example(list(range(20, 25)), [IGNORE, IGNORE] + list(range(22, 25)))  # a prompt, then a response
C = Example(list(range(30, 33)), list(range(30, 33)))


def test_packed_rows_carry_position_ids_and_no_mask():
    batch = batching.collate_packed([[A, B], [C]], pad_id=0)
    assert "attention_mask" not in batch
    assert batch.pop("num_tokens") == 15
    assert batch["position_ids"][0].tolist() == list(range(7)) + list(range(5))
    assert batch["position_ids"][1].tolist() == [0, 1, 2] + list(range(9))  # the padded tail: its own segment
    assert batch["labels"][0, 7] == IGNORE and batch["labels"][1, 3:].eq(IGNORE).all()
    assert batching.collate_packed([[C]], pad_id=0, width=256)["input_ids"].shape == (1, 256)
    assert batching.packed_width(4000, fixed=True) == 4096 and batching.packed_width(4000, fixed=False) is None


@pytest.mark.parametrize("impl", ["eager", "sdpa"])  # flex attention has no backward on CPU
@pytest.mark.parametrize("labelled_only", [True, False])
def test_packed_loss_and_gradients_equal_unpacked(impl, labelled_only):
    """Padding-free packing is exact: the same loss and LoRA gradients as one padded row per example."""
    from pipelines.training.step import StepConfig, loss_sum

    cfg = StepConfig(labelled=False, device="cpu", dtype=torch.float32, max_grad_norm=1.0,
                     labelled_logits_only=labelled_only)

    def loss_and_grads(batch):
        model = _tiny_lora_llama(impl)
        batch = {k: v for k, v in batch.items() if k != "num_tokens"}
        loss = loss_sum(model, batch, cfg)
        loss.backward()
        return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    packed_loss, packed_grads = loss_and_grads(batching.collate_packed([[A, B], [C]], pad_id=0))
    alone_loss, alone_grads = loss_and_grads(batching.collate_padded_causal([A, B, C], pad_id=0))
    torch.testing.assert_close(packed_loss, alone_loss, atol=1e-5, rtol=1e-5)
    assert packed_grads.keys() == alone_grads.keys() and len(packed_grads) == 2 * 2 * 7
    for name in packed_grads:
        assert packed_grads[name].abs().sum() > 0, name
        torch.testing.assert_close(packed_grads[name], alone_grads[name], atol=1e-5, rtol=1e-4)


def test_dynamic_padding_pads_to_the_longest_in_the_batch():
    batch = batching.collate_classification([Example([1, 2, 3], 0), Example([4], 1)], pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["num_tokens"] == 4 and batch["labels"].tolist() == [0, 1]


def test_sft_labels_cover_only_assistant_turns():
    from tests.tiny_models import build_tokenizer

    tok = build_tokenizer()
    assert batching.ensure_chat_template(tok) is True
    msgs = [{"role": "user", "content": "what is 2 plus 2?"}, {"role": "assistant", "content": "it is 4."},
            {"role": "user", "content": "and 3 plus 3?"}, {"role": "assistant", "content": "it is 6."}]
    ex = batching.encode_sft(msgs, tok, 128)
    labelled = tok.decode([t for t, lab in zip(ex.input_ids, ex.labels) if lab != IGNORE])
    assert labelled.replace(" ", "") == "itis4.</s>itis6.</s>"
    assert batching.encode_sft(msgs, tok, 10) is None  # truncation leaves no response token
