"""Tiny random-weight models of real architectures, saved with a locally built tokenizer.

They go through exactly the loading and training path a real checkpoint takes; nothing is
downloaded.
"""
from __future__ import annotations

from pathlib import Path

CORPUS = [f"question {i}: what is {i} plus {i}? answer: it is {2 * i}." for i in range(200)] + [
    "hello how are you", "please help me with my card", "the transfer has not arrived",
]


def build_tokenizer():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(CORPUS, trainers.WordPieceTrainer(
        vocab_size=300, special_tokens=["[PAD]", "[UNK]", "<s>", "</s>"]))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                   bos_token="<s>", eos_token="</s>")


def build_causal(arch: str, path: Path, **sizes) -> Path:
    """`sizes` override the tiny shape (hidden_size, num_attention_heads, ...)."""
    import torch
    from transformers import (
        FalconConfig,
        FalconForCausalLM,
        GPTNeoXConfig,
        GPTNeoXForCausalLM,
        LlamaConfig,
        LlamaForCausalLM,
        MistralConfig,
        MistralForCausalLM,
    )

    torch.manual_seed(0)
    tok = build_tokenizer()
    # initializer_range 0.5: with the default 0.02 the (frozen) embeddings are so small that logits
    # cannot peak, so no adapter could lower the loss much; pretrained models have no such limit.
    common = dict(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, initializer_range=0.5,
                  pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    common.update(sizes)
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(intermediate_size=64, num_key_value_heads=2, **common))
    elif arch == "mistral":
        model = MistralForCausalLM(MistralConfig(intermediate_size=64, num_key_value_heads=2, **common))
    elif arch == "falcon":
        model = FalconForCausalLM(FalconConfig(new_decoder_architecture=True, num_kv_heads=2, **common))
    elif arch == "gpt_neox":
        model = GPTNeoXForCausalLM(GPTNeoXConfig(intermediate_size=64, **common))
    else:
        raise ValueError(arch)
    model.save_pretrained(str(path), safe_serialization=True)
    tok.save_pretrained(str(path))
    return path
