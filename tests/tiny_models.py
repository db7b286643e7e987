"""Tiny random models for tests: built in milliseconds, never downloaded."""

from __future__ import annotations

from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase


def tiny_llama(tokenizer: PreTrainedTokenizerBase, **overrides: int) -> LlamaForCausalLM:
    """Returns a random one-layer Llama sized for ``tokenizer``, in eval mode.

    ``overrides`` replace any LlamaConfig setting (e.g. ``num_hidden_layers=2``).
    """
    settings = {
        "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
        "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 128,
    } | overrides
    config = LlamaConfig(
        vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **settings,
    )
    return LlamaForCausalLM(config).eval()
