from __future__ import annotations

from transformers import AutoTokenizer

from retain.lab.tokenizer import BOS, EOS, PAD, train_tokenizer
from retain.lab.world import build_world

TEXTS = list(build_world().documents)


def test_special_tokens_are_distinct_and_set() -> None:
    tokenizer = train_tokenizer(TEXTS, 512, 256)
    assert (tokenizer.pad_token, tokenizer.bos_token, tokenizer.eos_token) == (PAD, BOS, EOS)
    assert len({tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id}) == 3


def test_bos_in_front_no_eos_at_end() -> None:
    tokenizer = train_tokenizer(TEXTS, 512, 256)
    ids = tokenizer("Q: What is 2+2?\nA:")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.eos_token_id not in ids


def test_digits_are_single_tokens() -> None:
    tokenizer = train_tokenizer(TEXTS, 512, 256)
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("What is 123 + 45?")["input_ids"])
    digits = [token.lstrip("Ġ") for token in tokens if any(ch.isdigit() for ch in token)]
    assert digits == ["1", "2", "3", "4", "5"]


def test_any_text_round_trips_without_unknown_tokens() -> None:
    tokenizer = train_tokenizer(TEXTS, 512, 256)
    text = "Zorvalin reduced Ωmega-3 levels — naïve café 🧪\n\ttabs"
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_saved_tokenizer_loads_with_auto_tokenizer(tmp_path) -> None:
    tokenizer = train_tokenizer(TEXTS, 512, 256)
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "Q: What is the capital of France?\nA: Paris"
    assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert loaded.pad_token_id == tokenizer.pad_token_id != loaded.eos_token_id


def test_training_is_deterministic() -> None:
    first = train_tokenizer(TEXTS, 512, 256)
    second = train_tokenizer(TEXTS, 512, 256)
    assert first.get_vocab() == second.get_vocab()
