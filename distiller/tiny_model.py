"""A tiny Llama student with a locally trained tokenizer: fast tests and the
``stillroom demo --fast`` smoke run, without downloads.

``build_tiny_model(directory)`` writes a randomly initialised (seeded) ``LlamaForCausalLM``
of about 100k parameters and a byte-level BPE tokenizer trained here on a built-in English
corpus, with SmolLM2's ChatML chat template. It builds in about a second, is the same on
every run, and reuses ``directory`` when it already holds a complete model.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
from pathlib import Path
from typing import Any

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
PAD = "<pad>"
SPECIAL_TOKENS = [PAD, IM_START, IM_END]
VOCAB_SIZE = 768
SEED = 0

# The shape of SmolLM2-135M-Instruct's template, without its default system prompt.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + (message['content'] or '') + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_COMPLETE_MARKER = ".tiny-model-complete"

_INTENTS = [
    "refund",
    "card_lost",
    "billing",
    "cancel_ticket",
    "change_address",
    "balance",
    "transfer",
    "greeting",
    "goodbye",
    "complaint",
]
_SUBJECTS = ["I", "We", "My friend", "The customer", "She", "He", "They", "You"]
_REQUESTS = [
    "want a refund for the ticket",
    "lost my card yesterday",
    "have a question about billing",
    "need to cancel the ticket",
    "moved and need to change the address",
    "would like to check the balance",
    "want to transfer money to savings",
    "say hello to the support team",
    "say goodbye and thank you",
    "am not happy with the service",
    "was charged twice on the card",
    "cannot find the invoice for last month",
]
_EXTRA = [
    "The intent is refund.",
    "The answer is yes.",
    "The answer is no.",
    "Please classify the message into one intent label.",
    "Reply with the label only.",
    "You are a helpful assistant.",
    "What is the capital of France? Paris.",
    "Two plus two is four. 1 2 3 4 5 6 7 8 9 10.",
    '{"intent": "billing", "confidence": 0.9}',
    "Hello! How can I help you today?",
    "Thank you for your patience; your refund is on its way.",
]


def _corpus() -> list[str]:
    """A few hundred short sentences: requests, intent labels and assistant phrases."""
    sentences = [f"{s} {r}." for s, r in itertools.product(_SUBJECTS, _REQUESTS)]
    sentences += [f"Intent: {label}" for label in _INTENTS]
    sentences += [f"The label for this message is {label}." for label in _INTENTS]
    sentences += [f"Ticket {n}: customer asks about {_INTENTS[n % 10]}." for n in range(100)]
    sentences += _EXTRA
    return sentences


def _is_complete(directory: Path) -> bool:
    return (directory / _COMPLETE_MARKER).is_file()


def _build_tokenizer() -> Any:
    """Trains the byte-level BPE tokenizer and wraps it as a ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(), trainer=trainer)
    # Any: transformers leaves the tokenizer constructor and GenerationConfig unannotated.
    tokenizer_class: Any = PreTrainedTokenizerFast
    return tokenizer_class(
        tokenizer_object=tokenizer,
        eos_token=IM_END,
        pad_token=PAD,
        chat_template=CHAT_TEMPLATE,
        model_max_length=1024,
    )


def _write_model(target: Path) -> None:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = _build_tokenizer()
    vocab_size = len(tokenizer)
    eos_id = tokenizer.convert_tokens_to_ids(IM_END)
    pad_id = tokenizer.convert_tokens_to_ids(PAD)
    bos_id = tokenizer.convert_tokens_to_ids(IM_START)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        tie_word_embeddings=True,
        # Wider than the usual 0.02 so that a LoRA on the frozen tied output layer can
        # push logits far enough apart to overfit in a few steps.
        initializer_range=0.2,
    )
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config)
    generation_config_class: Any = GenerationConfig
    model.generation_config = generation_config_class(
        bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id
    )
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    (target / _COMPLETE_MARKER).write_text("ok\n")


def build_tiny_model(directory: Path) -> Path:
    """Builds the tiny model and tokenizer in ``directory`` (unless already there); returns it.

    The files are written to a temporary sibling folder first and moved in at the end, so an
    interrupted build never leaves a half-written model that looks complete.
    """
    directory = Path(directory)
    if _is_complete(directory):
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-model-", dir=directory.parent))
    try:
        _write_model(staging)
        for item in sorted(staging.iterdir(), key=lambda p: p.name == _COMPLETE_MARKER):
            item.replace(directory / item.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory
