"""Tiny random models for tests: built in milliseconds, never downloaded."""

from __future__ import annotations

from pathlib import Path

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


# ChatML, as SmolLM2 and Qwen ship it: what a GGUF file's tokenizer.chat_template holds.
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def tiny_gguf(path: Path, *, architecture: str = "llama", layers: int = 1, hidden: int = 32, seed: int = 0) -> Path:
    """Writes a random Llama-shaped model as a GGUF file (float32 tensors) with a byte-level
    BPE tokenizer and a ChatML template: what a real GGUF release holds, in kilobytes.

    ``architecture`` is written as ``general.architecture`` (a name transformers does not
    read from GGUF makes the file unsupported, for the error paths).
    """
    import numpy as np
    from gguf import GGUFWriter
    from tokenizers.pre_tokenizers import ByteLevel

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokens = special + sorted(ByteLevel.alphabet())
    heads, kv_heads, ffn = 2, 1, hidden * 2
    head_dim = hidden // heads
    rng = np.random.default_rng(seed)
    writer = GGUFWriter(str(path), architecture)
    writer.add_block_count(layers)
    writer.add_context_length(128)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3] * len(special) + [1] * (len(tokens) - len(special)))
    writer.add_token_scores([0.0] * len(tokens))
    writer.add_token_merges([])
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(2)
    writer.add_chat_template(CHATML)

    def tensor(name: str, *shape: int) -> None:
        writer.add_tensor(name, (rng.standard_normal(shape) * 0.02).astype(np.float32))

    tensor("token_embd.weight", len(tokens), hidden)
    writer.add_tensor("output_norm.weight", np.ones(hidden, dtype=np.float32))
    for layer in range(layers):
        block = f"blk.{layer}"
        writer.add_tensor(f"{block}.attn_norm.weight", np.ones(hidden, dtype=np.float32))
        writer.add_tensor(f"{block}.ffn_norm.weight", np.ones(hidden, dtype=np.float32))
        tensor(f"{block}.attn_q.weight", hidden, hidden)
        tensor(f"{block}.attn_k.weight", kv_heads * head_dim, hidden)
        tensor(f"{block}.attn_v.weight", kv_heads * head_dim, hidden)
        tensor(f"{block}.attn_output.weight", hidden, hidden)
        tensor(f"{block}.ffn_gate.weight", ffn, hidden)
        tensor(f"{block}.ffn_up.weight", ffn, hidden)
        tensor(f"{block}.ffn_down.weight", hidden, ffn)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
