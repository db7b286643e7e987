from __future__ import annotations

import copy
import math

import pytest
import torch
from peft import LoraConfig, get_peft_model
from tiny_models import tiny_llama
from transformers import LlamaForCausalLM

from retain.evaluation.base_logprobs import BaseLogprobs, base_logprobs_from_adapter_model, compute_base_logprobs
from retain.evaluation.drift import drift_report, kl_to_base, perplexity
from retain.lab.tokenizer import train_tokenizer
from retain.lab.world import build_world

TEXT = (
    "The river rises in the hills and runs west to the sea. Farmers along its banks grow "
    "wheat and barley, and in spring the water is high. Q: What is 12+7?\nA: 19\n"
) * 4
WINDOW = 32


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    tokenizer = train_tokenizer(build_world().documents, 384, 128)
    return tiny_llama(tokenizer), tokenizer


@pytest.fixture(scope="module")
def base(tiny) -> BaseLogprobs:
    model, tokenizer = tiny
    return compute_base_logprobs(model, tokenizer, TEXT, k=16, window=WINDOW, batch_size=4)


def _windows(tokenizer) -> list[torch.Tensor]:
    ids = torch.tensor(tokenizer(TEXT)["input_ids"])
    return [piece for piece in ids.split(WINDOW) if len(piece) >= 2]


def _perturbed(model: LlamaForCausalLM) -> LlamaForCausalLM:
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.model.layers[0].mlp.down_proj.weight.add_(0.5 * torch.randn(32, 64))
    return changed


def test_text_spans_several_windows_with_a_short_last_one(tiny) -> None:
    lengths = [len(piece) for piece in _windows(tiny[1])]
    assert len(lengths) > 4 and lengths[-1] < WINDOW


def test_base_shapes(tiny, base) -> None:
    total = sum(len(piece) - 1 for piece in _windows(tiny[1]))
    assert base.tokens == total
    assert base.topk_ids.shape == base.topk_logprobs.shape == (total, 16)
    assert base.topk_ids.dtype == torch.int32 and base.topk_logprobs.dtype == torch.float32
    mass = base.topk_logprobs.double().exp().sum(-1) + base.rest_logprobs.double().exp()
    assert torch.allclose(mass, torch.ones_like(mass), atol=1e-5)


def test_kl_of_the_same_model_is_zero(tiny, base) -> None:
    model, tokenizer = tiny
    assert kl_to_base(model, tokenizer, base, batch_size=4) < 1e-6
    assert kl_to_base(model, tokenizer, base, batch_size=3) < 1e-6


def test_kl_grows_when_a_weight_changes(tiny, base) -> None:
    model, tokenizer = tiny
    assert kl_to_base(_perturbed(model), tokenizer, base) > 1e-4


def test_full_vocabulary_kl_is_exact(tiny) -> None:
    model, tokenizer = tiny
    tuned = _perturbed(model)
    vocab = model.config.vocab_size
    full_base = compute_base_logprobs(model, tokenizer, TEXT, k=vocab, window=WINDOW)
    bucketed = kl_to_base(tuned, tokenizer, full_base)
    kl_sum, count = 0.0, 0
    with torch.no_grad():
        for piece in _windows(tokenizer):
            p = model(piece[None]).logits[0, :-1].double().log_softmax(-1)
            q = tuned(piece[None]).logits[0, :-1].double().log_softmax(-1)
            kl_sum += (p.exp() * (p - q)).sum().item()
            count += len(piece) - 1
    assert bucketed == pytest.approx(kl_sum / count, abs=1e-5)
    assert bucketed >= kl_to_base(tuned, tokenizer, compute_base_logprobs(
        model, tokenizer, TEXT, k=4, window=WINDOW)) - 1e-9  # coarser is a lower bound


def test_perplexity_equals_the_direct_loss(tiny) -> None:
    model, tokenizer = tiny
    sentence = "The river rises in the hills and runs west to the sea."
    ids = torch.tensor([tokenizer(sentence)["input_ids"]])
    assert ids.shape[1] < 128
    with torch.no_grad():
        expected = math.exp(model(ids, labels=ids).loss.item())
    assert perplexity(model, tokenizer, sentence) == pytest.approx(expected, rel=1e-4)


def test_batching_and_padding_do_not_change_perplexity(tiny) -> None:
    model, tokenizer = tiny
    nll, count = 0.0, 0
    with torch.no_grad():
        for piece in _windows(tokenizer):
            nll += model(piece[None], labels=piece[None]).loss.item() * (len(piece) - 1)
            count += len(piece) - 1
    expected = math.exp(nll / count)
    one_by_one = perplexity(model, tokenizer, TEXT, window=WINDOW, batch_size=1)
    batched = perplexity(model, tokenizer, TEXT, window=WINDOW, batch_size=16)
    assert one_by_one == pytest.approx(expected, rel=1e-4)
    assert batched == pytest.approx(one_by_one, rel=1e-5)


def test_drift_report_combines_both(tiny, base) -> None:
    model, tokenizer = tiny
    tuned = _perturbed(model)
    report = drift_report(tuned, tokenizer, TEXT, base, batch_size=4)
    assert report.kl == pytest.approx(kl_to_base(tuned, tokenizer, base, batch_size=4), rel=1e-6)
    assert report.perplexity == pytest.approx(
        perplexity(tuned, tokenizer, TEXT, window=WINDOW), rel=1e-6
    )
    assert (report.tokens, report.k) == (base.tokens, 16)
    without_base = drift_report(tuned, tokenizer, TEXT, None, window=WINDOW)
    assert without_base.kl is None and without_base.tokens == base.tokens
    assert without_base.to_dict()["perplexity"] == pytest.approx(report.perplexity)


def test_save_load_round_trip(tiny, base, tmp_path) -> None:
    model, tokenizer = tiny
    path = tmp_path / "base.safetensors"
    base.save(path)
    loaded = BaseLogprobs.load(path, TEXT, tokenizer)
    assert (loaded.fingerprint, loaded.k, loaded.window) == (base.fingerprint, 16, WINDOW)
    for name in ("token_ids", "topk_ids", "topk_logprobs", "rest_logprobs"):
        assert torch.equal(getattr(loaded, name), getattr(base, name))
    assert kl_to_base(model, tokenizer, loaded, batch_size=4) < 1e-6


def test_fingerprint_mismatch_is_refused(tiny, base, tmp_path) -> None:
    model, tokenizer = tiny
    path = tmp_path / "base.safetensors"
    base.save(path)
    with pytest.raises(ValueError, match="another reference text"):
        BaseLogprobs.load(path, TEXT + " more", tokenizer)
    with pytest.raises(ValueError, match="recompute"):
        drift_report(model, tokenizer, "another text entirely", base)


def test_mode_is_restored(tiny, base) -> None:
    model, tokenizer = tiny
    model.train()
    kl_to_base(model, tokenizer, base)
    perplexity(model, tokenizer, TEXT)
    assert model.training
    model.eval()
    compute_base_logprobs(model, tokenizer, TEXT, k=2, window=WINDOW)
    assert not model.training


def test_invalid_arguments(tiny) -> None:
    model, tokenizer = tiny
    with pytest.raises(ValueError, match="exceeds the vocabulary"):
        compute_base_logprobs(model, tokenizer, TEXT, k=10_000)
    with pytest.raises(ValueError, match="window"):
        perplexity(model, tokenizer, TEXT, window=1)
    with pytest.raises(ValueError, match="too short"):
        perplexity(model, tokenizer, "")


@pytest.mark.parametrize(("init", "moved"), [(False, True), (True, False)])
def test_lora_adapter_against_its_disabled_base(tiny, init: bool, moved: bool) -> None:
    model, tokenizer = tiny
    torch.manual_seed(1)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                        init_lora_weights=init)
    peft_model = get_peft_model(copy.deepcopy(model), config)
    base = base_logprobs_from_adapter_model(peft_model, tokenizer, TEXT, k=16, window=WINDOW)
    plain = compute_base_logprobs(model, tokenizer, TEXT, k=16, window=WINDOW)
    assert torch.allclose(base.topk_logprobs, plain.topk_logprobs, atol=1e-5)
    kl = kl_to_base(peft_model, tokenizer, base)
    assert (kl > 1e-6) if moved else (kl < 1e-6)


def test_a_checks_drift_scores_the_first_whole_windows_only(tiny, base) -> None:
    # guards.drift.check_tokens (issue 25): a check reads the first windows of the text.
    model, tokenizer = tiny
    tuned = _perturbed(model)
    windows = _windows(tokenizer)
    assert len(windows) > 2
    cut = drift_report(tuned, tokenizer, TEXT, base, batch_size=4, max_tokens=2 * WINDOW + WINDOW // 2)
    assert cut.tokens == 2 * (WINDOW - 1) < base.tokens
    with torch.no_grad():
        losses = [float(tuned(input_ids=piece[None], labels=piece[None]).loss) for piece in windows[:2]]
    assert cut.perplexity == pytest.approx(math.exp(sum(losses) / 2), rel=1e-4)
    whole = drift_report(tuned, tokenizer, TEXT, base, batch_size=4)
    assert cut.kl != pytest.approx(whole.kl)  # fewer positions: another reading, not the same one
    assert drift_report(model, tokenizer, TEXT, base, batch_size=4, max_tokens=1).tokens == WINDOW - 1


@pytest.mark.parametrize("damage", ["truncated", "foreign"])
def test_a_damaged_logprobs_file_is_a_value_error(tiny, base, tmp_path, damage) -> None:
    _, tokenizer = tiny
    path = tmp_path / "base.safetensors"
    base.save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\x00" * 64)
    with pytest.raises(ValueError, match="base.safetensors"):
        BaseLogprobs.load(path, TEXT, tokenizer)
