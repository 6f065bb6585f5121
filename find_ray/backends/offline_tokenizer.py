"""A character-level CLIP tokenizer written to disk: loads like any tokenizer folder and needs
no download (tiny random pipelines in tests, random-weight models in the throughput benchmark)."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import CLIPTokenizer


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
