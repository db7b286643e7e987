"""The lab tokenizer: a small byte-level BPE trained on the lab world.

Byte-level so that any text (the invented drug names of the domain task included)
encodes without unknown tokens; digits split one per token so that sums are learnable
digit by digit. Saved as an ordinary ``PreTrainedTokenizerFast`` with distinct pad, BOS
and EOS tokens: pad != eos, so masking padding never masks the end of an answer.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS = "<pad>", "<s>", "</s>"
SPECIAL_TOKENS = (PAD, BOS, EOS)


def train_tokenizer(
    texts: Iterable[str], vocab_size: int, model_max_length: int
) -> PreTrainedTokenizerFast:
    """Trains a byte-level BPE tokenizer on ``texts``.

    Encoding adds BOS in front of every text and nothing at the end, like Llama's
    tokenizer: training code appends EOS itself, and prompts stay open for generation.

    Args:
        texts: Training text.
        vocab_size: Vocabulary size including the special tokens and the 256 bytes.
        model_max_length: Longest sequence the model will see, recorded in the tokenizer.

    Returns:
        The tokenizer, with ``pad_token``, ``bos_token`` and ``eos_token`` set.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    bos_id = tokenizer.token_to_id(BOS)
    tokenizer.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, bos_id)]
            ),
        ]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        model_max_length=model_max_length,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
