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


def test_packed_rows_compute_the_same_logits_as_separate_examples():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2)).eval()
    a = Example(list(range(3, 10)), list(range(3, 10)))
    b = Example(list(range(20, 25)), list(range(20, 25)))
    c = Example(list(range(30, 33)), list(range(30, 33)))
    batch = batching.collate_packed([[a, b], [c]], pad_id=0, dtype=torch.float32)
    assert batch.pop("num_tokens") == 15
    assert batch["position_ids"][0].tolist() == list(range(7)) + list(range(5))
    assert batch["labels"][0, 7] == IGNORE and batch["labels"][1, 3:].eq(IGNORE).all()
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                       attention_mask=batch["attention_mask"]).logits
        alone_a = model(input_ids=torch.tensor([a.input_ids])).logits
        alone_b = model(input_ids=torch.tensor([b.input_ids])).logits
        alone_c = model(input_ids=torch.tensor([c.input_ids])).logits
    torch.testing.assert_close(packed[0, :7], alone_a[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(packed[0, 7:12], alone_b[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(packed[1, :3], alone_c[0], atol=1e-5, rtol=0)


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
