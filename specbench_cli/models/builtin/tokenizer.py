"""A byte-level BPE tokenizer trained on the built-in training text, saved as a Hugging Face one."""

from __future__ import annotations

from typing import Iterable, Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from ...bench.prompts import vicuna_prompt

UNK, BOS, EOS, PAD = "<unk>", "<s>", "</s>", "<pad>"
SPECIAL_TOKENS = [UNK, BOS, EOS, PAD]  # ids 0..3 in this order


def conversation_text(turns: Sequence[str], answers: Sequence[str]) -> str:
    """The whole Vicuna text of a conversation, every answer included: what the tokenizer learns."""
    return vicuna_prompt(list(turns), list(answers[:-1]), eos=EOS) + " " + answers[-1] + EOS


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train BPE on `texts`; the result encodes like a Llama tokenizer (BOS added by default).

    Byte level, so any text encodes without <unk>. The special tokens are matched in raw text too,
    so the literal "</s>" between turns of a Vicuna prompt becomes the EOS id, as with Vicuna.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=PAD,
        clean_up_tokenization_spaces=False,
        model_max_length=512,
    )
