"""Tokenizers written to disk without a download: a character-level CLIP tokenizer and a
character-level T5 tokenizer (Unigram, no sentencepiece model). They load like any tokenizer
folder (tiny random pipelines in tests, random-weight models in the throughput benchmark)."""

from __future__ import annotations

import json
import string
from pathlib import Path

from transformers import CLIPTokenizer, T5TokenizerFast


def _byte_chars() -> list[str]:
    """GPT-2/CLIP's printable stand-ins for the 256 byte values."""
    keep = [*range(33, 127), *range(161, 173), *range(174, 256)]
    extra = [b for b in range(256) if b not in keep]
    return [chr(b) for b in keep] + [chr(256 + i) for i in range(len(extra))]


def char_tokenizer(folder: Path) -> CLIPTokenizer:
    """A CLIPTokenizer over single bytes (no merges), saved to and loaded from `folder`."""
    chars = _byte_chars()
    vocab = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer.from_pretrained(folder, model_max_length=32)


def t5_tokenizer(folder: Path) -> T5TokenizerFast:
    """A T5 tokenizer (the T5 and umT5 encoders' kind) over printable characters plus T5's
    word-start mark and its <pad>, </s>, <unk>; saved to and loaded from `folder`."""
    chars = [c for c in string.printable if not c.isspace()]
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)]
    tokenizer = T5TokenizerFast(vocab=[*pieces, *((c, -1.0) for c in chars)], extra_ids=0)
    tokenizer.save_pretrained(folder)
    return T5TokenizerFast.from_pretrained(folder)
