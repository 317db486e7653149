"""The one inference path: batching does not change answers, and serving answers with exactly it."""
import numpy as np
import pytest
import torch

from pipelines.inference import predict
from pipelines.serving import engine
from pipelines.training.batching import Example
from tests.tiny_models import build_causal, build_tokenizer

TEXTS = ["please help me with my card", "the transfer has not arrived", "hello", "what is 3 plus 3? answer: it is 6."]


@pytest.fixture(scope="module")
def classifier():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    tok = build_tokenizer()
    model = BertForSequenceClassification(BertConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        num_labels=3, pad_token_id=tok.pad_token_id)).eval()
    return model, tok


@pytest.mark.parametrize("batch_size", [1, 3, None])
def test_classify_answers_the_same_whatever_the_batch(classifier, batch_size):
    model, tok = classifier
    whole = predict.classify(model, tok, TEXTS, max_length=32)
    assert whole.shape == (len(TEXTS), 3) and np.allclose(whole.sum(1), 1.0, atol=1e-5)
    assert np.allclose(predict.classify(model, tok, TEXTS, 32, batch_size), whole, atol=1e-5)


def test_serving_classifies_through_the_evaluated_path(classifier):
    model, tok = classifier
    loaded = engine.Loaded(1, "classification", model, tok, ["a", "b", "c"], 32)
    assert np.array_equal(engine.classify(loaded, TEXTS), predict.classify(model, tok, TEXTS, 32))


def test_generate_counts_tokens_and_serving_generates_the_same(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = build_causal("llama", tmp_path / "llama")
    model, tok = AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    text, n_in, n_out = predict.generate(model, tok, None, 5, prompt="question 3: what is")
    assert n_in == len(tok("question 3: what is", add_special_tokens=False)["input_ids"]) and 1 <= n_out <= 5
    loaded = engine.Loaded(1, "causal_lm", model, tok, None, 64)
    assert engine.generate(loaded, None, 5, prompt="question 3: what is") == (text, n_in, n_out)


def test_mean_loss_restores_the_mode_it_found(classifier):
    model, tok = classifier
    examples = [Example(tok(t)["input_ids"], i % 3) for i, t in enumerate(TEXTS)]
    model.train()
    metrics = predict.mean_loss(model, examples, "classification", 2, tok.pad_token_id, "cpu")
    assert model.training and set(metrics) == {"eval_loss", "eval_accuracy"} and metrics["eval_loss"] > 0
    model.eval()
    again = predict.mean_loss(model, examples, "classification", 4, tok.pad_token_id, "cpu")
    assert not model.training and again == pytest.approx(metrics)


def test_generate_many_answers_as_one_at_a_time_in_the_order_asked(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipelines.training.batching import ensure_chat_template

    path = build_causal("llama", tmp_path / "llama")
    model, tok = AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    ensure_chat_template(tok)
    chats = [[{"role": "user", "content": t}] for t in ("hello", "what is 3 plus 3? answer: it is",
                                                        "please help me with my card and the transfer", "hi")]
    one_by_one = [predict.generate(model, tok, c, 6)[0] for c in chats]
    for batch_size in (1, 3, 8):
        assert predict.generate_many(model, tok, chats, 6, batch_size) == one_by_one


def _tiny_chat_model(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipelines.training.batching import ensure_chat_template

    path = build_causal("llama", tmp_path / "llama")
    model, tok = AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    ensure_chat_template(tok)
    return model, tok


def test_generate_batch_rows_keep_their_own_limits_streams_and_cancel(tmp_path):
    import threading

    from transformers import TextIteratorStreamer

    model, tok = _tiny_chat_model(tmp_path)
    chats = [[{"role": "user", "content": t}] for t in ("hello", "please help me with my card and the transfer", "hi")]
    alone = [predict.generate(model, tok, c, n) for c, n in zip(chats, (3, 9, 6))]
    streamers = [TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True, timeout=30) for _ in chats]
    asks = [predict.Ask(c, n, streamer=s) for c, n, s in zip(chats, (3, 9, 6), streamers)]
    together = predict.generate_batch(model, tok, asks)
    assert [a[:3] for a in together] == alone  # same text and token counts as alone, each at its own limit
    assert ["".join(s) for s in streamers] == [text for text, _, _ in alone]  # each row's tokens to its stream
    cancel = threading.Event()
    cancel.set()
    short, long_ = predict.generate_batch(model, tok, [predict.Ask(chats[0], 9, cancel=cancel),
                                                        predict.Ask(chats[1], 9)])
    assert short[2] == 1 and long_[:3] == alone[1]  # a cancelled row ends at its first token, the other goes on


def test_generate_batch_reports_each_answers_mean_token_logprob(tmp_path):
    import torch

    model, tok = _tiny_chat_model(tmp_path)
    chats = [[{"role": "user", "content": t}] for t in ("hello", "please help me with my card and the transfer")]
    for chat, answer in zip(chats, predict.generate_batch(model, tok, [predict.Ask(c, 7) for c in chats])):
        prompt = tok(tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True),
                     add_special_tokens=False)["input_ids"]
        new = predict.generate(model, tok, chat, 7)  # the same greedy tokens, alone
        ids = model.generate(input_ids=torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             max_new_tokens=7, do_sample=False, pad_token_id=tok.pad_token_id)[0]
        assert new[2] == answer.completion_tokens == len(ids) - len(prompt)
        with torch.no_grad():
            logp = torch.log_softmax(model(ids[None]).logits[0, :-1].float(), -1)
        direct = logp[range(len(prompt) - 1, len(ids) - 1), ids[len(prompt):]].mean().item()
        assert answer.mean_logprob == pytest.approx(direct, abs=1e-4) and answer.mean_logprob < 0


def test_sequence_nll_with_a_shared_prefix_equals_scoring_each_chat_alone(tmp_path):
    """The prefix's KV cache is reused for every chat: the same sums as a full forward per chat."""
    import torch

    from pipelines.training import batching

    model, tok = _tiny_chat_model(tmp_path)
    question = [{"role": "user", "content": "what is the code for my card?"}]
    chats = [question + [{"role": "assistant", "content": f"the code is {n}."}] for n in ("12", "199", "3 4 5", "77")]
    got = predict.sequence_nll(model, tok, chats, 64, batch_size=3)
    for chat, value in zip(chats, got):
        e = batching.encode_sft(chat, tok, 64)
        ids, labels = torch.tensor([e.input_ids]), torch.tensor(e.labels)
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
        keep = labels[1:] != batching.IGNORE
        direct = -logp[torch.arange(len(labels) - 1)[keep], labels[1:][keep]].sum().item()
        assert value == pytest.approx(direct, rel=1e-4, abs=1e-4)
    assert len(set(round(v, 3) for v in got)) == 4  # the secrets differ, so do their likelihoods
