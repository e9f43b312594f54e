"""A tiny random GPT-2-shaped transformer and a small text corpus, written by the tests.

Nothing is downloaded: the tokenizer is a byte-level BPE trained on the corpus below, the model a
randomly initialised ``GPT2LMHeadModel`` saved with ``save_pretrained``, so the production code
loads it through its local-path route exactly as it would load a real checkpoint.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

_PROSE = (
    "the cat sat on a mat while the dog ran through the park and birds sang in tall trees "
    "rain fell over the quiet town as people walked home with bread milk and fresh fruit "
    "numbers like one two three four five appear in lists tables and long reports"
)
WORDS = _PROSE.split(" ")


def corpus_lines(documents: int = 200, seed: int = 0) -> list[str]:
    """Deterministic pseudo-English documents of 20–60 words."""
    rng = random.Random(seed)
    return [
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 60))) for _ in range(documents)
    ]


def write_corpus(folder: Path, documents: int = 200, seed: int = 0, jsonl: bool = False) -> Path:
    """Write the corpus as one .txt file (a document per line) or as JSONL with a "text" field."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = corpus_lines(documents, seed)
    if jsonl:
        path = folder / "corpus.jsonl"
        path.write_text("".join(json.dumps({"text": line}) + "\n" for line in lines))
    else:
        path = folder / "corpus.txt"
        path.write_text("\n".join(lines) + "\n")
    return path


def write_tiny_model(
    folder: Path, d_model: int = 32, layers: int = 2, heads: int = 4, n_ctx: int = 64, seed: int = 0
) -> Path:
    """Save a random GPT-2-shaped model and a BPE tokenizer trained on the corpus to ``folder``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus_lines(), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<unk>",
    )
    fast.save_pretrained(folder)
    config = GPT2Config(
        vocab_size=len(fast), n_positions=n_ctx, n_embd=d_model, n_layer=layers, n_head=heads,
        bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    torch.manual_seed(seed)
    GPT2LMHeadModel(config).save_pretrained(folder)
    return folder
