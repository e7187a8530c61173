"""Tokenizers of the ``clip-clap`` family's two text towers, from local files only.

- CLIP: open_clip's BPE tokenizer, whose vocabulary ships inside the open_clip package (the same
  ``bpe_simple_vocab_16e6`` the release vendors in few-shot/nets/clip/).
- CLAP: RoBERTa's byte-level BPE from the user's roberta-base ``vocab.json`` + ``merges.txt``. The
  release fetches it from the hub (few-shot nets/prompt_learner.py:60-75); transformers 5 silently
  builds a 5-token tokenizer when the files are missing, so every problem here is an error naming
  the file, and a vocabulary whose size is not the text model's (50,265 for roberta-base) is refused.
  ``byte-level`` (no files) is an explicit choice for tiny random-weight models only: the 256 byte
  symbols and the special tokens, no merges.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import torch

__all__ = [
    "BYTE_LEVEL",
    "ClapTokens",
    "byte_level_vocab",
    "clap_tokenize",
    "clip_tokenize",
    "load_roberta_tokenizer",
]

BYTE_LEVEL = "byte-level"
_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")


def clip_tokenize(texts: Sequence[str], context_length: int = 77) -> torch.Tensor:
    """CLIP token ids ``[N, context_length]`` (start token, BPE, end token 49407, zero padding)."""
    import open_clip

    return open_clip.tokenize(list(texts), context_length=context_length)


def _byte_symbols() -> list[str]:
    """The printable symbol byte-level BPE uses for each byte 0..255: printable Latin-1 bytes
    stand for themselves, the others are moved to code points 256 and up, in byte order."""
    printable = {*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)}
    shifted, out = 0, []
    for b in range(256):
        if b in printable:
            out.append(chr(b))
        else:
            out.append(chr(256 + shifted))
            shifted += 1
    return out


def byte_level_vocab() -> dict[str, int]:
    """The smallest byte-level vocabulary: 4 special tokens, the 256 byte symbols, ``<mask>``."""
    vocab = {tok: i for i, tok in enumerate(_SPECIALS)}
    for symbol in _byte_symbols():
        vocab.setdefault(symbol, len(vocab))
    vocab["<mask>"] = len(vocab)
    return vocab


@lru_cache(maxsize=8)
def _cached_tokenizer(source: str, expected: int):
    from transformers import RobertaTokenizer

    if source == BYTE_LEVEL:
        vocab, merges = byte_level_vocab(), []
        tok = RobertaTokenizer(vocab=vocab, merges=merges)
        where = "byte-level tokenizer"
    else:
        folder = Path(source)
        if not folder.is_dir():
            raise ValueError(
                f"{folder}: tokenizer folder not found (model.text.tokenizer: a folder with "
                "roberta-base vocab.json and merges.txt)"
            )
        vocab_file, merges_file = folder / "vocab.json", folder / "merges.txt"
        for path in (vocab_file, merges_file):
            if not path.is_file():
                raise ValueError(
                    f"{path}: not found (model.text.tokenizer needs roberta-base vocab.json and merges.txt)"
                )
        try:
            vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{vocab_file}: not a JSON vocabulary ({exc})") from None
        if not isinstance(vocab, dict) or not all(isinstance(v, int) for v in vocab.values()):
            raise ValueError(f"{vocab_file}: expected a JSON object token -> id")
        if len(vocab) != expected:
            raise ValueError(
                f"{vocab_file}: {len(vocab):,} entries, but the CLAP text branch has a {expected:,}-token "
                "vocabulary (roberta-base: 50,265); use roberta-base's vocab.json and merges.txt"
            )
        missing = [t for t in (*_SPECIALS, "<mask>") if t not in vocab]
        if missing:
            raise ValueError(f"{vocab_file}: no {', '.join(missing)} token(s): not a RoBERTa vocabulary")
        lines = merges_file.read_text(encoding="utf-8").splitlines()
        bad = next(
            (
                i
                for i, line in enumerate(lines, 1)
                if line and not line.startswith("#") and len(line.split()) != 2
            ),
            None,
        )
        if bad is not None:
            raise ValueError(f"{merges_file}:{bad}: expected two symbols per merge line")
        tok = RobertaTokenizer(vocab=str(vocab_file), merges=str(merges_file))
        where = str(vocab_file)
    # transformers falls back to a 5-token vocabulary when it cannot read the files: check the result.
    if len(tok) != expected:
        raise ValueError(f"{where}: the tokenizer has {len(tok):,} tokens, expected {expected:,}")
    return tok


def load_roberta_tokenizer(source: str | Path | None, vocab_size: int):
    """RoBERTa's tokenizer from ``source`` (a folder with ``vocab.json`` + ``merges.txt``, or
    ``byte-level``), checked to have exactly ``vocab_size`` tokens."""
    if source is None or str(source) == "":
        raise ValueError(
            "model.text.tokenizer is not set: the CLAP text branch needs roberta-base's vocab.json and "
            "merges.txt in a local folder (nothing is downloaded)"
        )
    return _cached_tokenizer(str(source), int(vocab_size))


class ClapTokens:
    """CLAP prompt token ids and attention mask (``[N, max_length]`` each)."""

    def __init__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
        self.input_ids, self.attention_mask = input_ids, attention_mask


def clap_tokenize(texts: Sequence[str], tokenizer, max_length: int = 77) -> ClapTokens:
    """Pad to ``max_length`` and truncate, as the release tokenises its prompts."""
    out = tokenizer(
        list(texts), padding="max_length", truncation=True, max_length=max_length, return_tensors="pt"
    )
    return ClapTokens(out["input_ids"].long(), out["attention_mask"].long())
