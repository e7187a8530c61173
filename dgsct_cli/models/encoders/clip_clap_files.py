"""The ``clip-clap`` family's three files: which they are, and random ones in the published layouts.

The few-shot and zero-shot recipes read OpenAI's CLIP ``ViT-B-32.pt``, LAION's CLAP
``630k-audioset-fusion-best.pt`` and roberta-base's ``vocab.json`` + ``merges.txt``; nothing is
downloaded. :func:`write_random_files` writes files of the same layouts at the towers' (any) size
with random values, so that the commands can be tried without the real ones (the tiny recipes do it
by themselves) and memory can be measured at full size:

- CLIP: an OpenAI-layout state dict (the keys and fp16 values of the published archive, with its
  ``input_resolution``/``context_length``/``vocab_size`` entries), saved with ``torch.save`` (the
  published file is a TorchScript archive of the same state; both load);
- CLAP: ``{'state_dict': {'module.<key>': tensor}}`` with the HTS-AT audio branch in LAION's key
  layout (patch merging at the end of a stage), the STFT kernels and mel matrix, the audio and text
  projections, the RoBERTa text branch (with its ``position_ids`` buffer) and both logit scales;
- tokenizer: a byte-level BPE ``vocab.json`` (``<s>``, ``<pad>``, ``</s>``, ``<unk>`` first, ``<mask>``
  last, as roberta-base) and ``merges.txt`` with exactly the text tower's vocabulary size.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import torch

from ...atomic import atomic_output, atomic_write_bytes
from .base import WeightFile
from .clap import clap_towers
from .clip import build_clip
from .configs import ROBERTA_BASE, CLAPAudioConfig, ClipClapTextConfig, CLIPConfig
from .tokenizers import _byte_symbols

__all__ = [
    "clip_clap_weight_files",
    "clip_openai_state",
    "laion_clap_state",
    "write_random_files",
    "write_roberta_tokenizer",
]

CLIP_SOURCE = (
    "OpenAI's CLIP release (the ViT-B/32 TorchScript archive); a plain OpenAI-layout state dict works too"
)
CLAP_SOURCE = (
    "LAION CLAP, lukewys/laion_clap on Hugging Face (630k-audioset-fusion-best.pt or 630k-fusion-best.pt)"
)
TOKENIZER_SOURCE = "vocab.json and merges.txt of the roberta-base repository on Hugging Face, in one folder"

# Words the tokenizer's first merges are learned from: the CLAP prompt template and common words,
# so that prompts take a few tokens each (what the merges are does not matter to random weights).
_CORPUS = (
    "The sounds of background speech music dog cat car bell train engine water wind guitar piano "
    "violin drum singing baby crying laughter clapping helicopter motorcycle truck bus horse cattle "
    "chicken rooster goat frog insects fire alarm siren church bell male female voice playing"
)


def clip_clap_weight_files(
    visual: CLIPConfig, audio: CLAPAudioConfig, text: ClipClapTextConfig
) -> list[WeightFile]:
    """The three files a ``clip-clap`` model reads; the tokenizer is required (the prompts need it),
    the weights are not (a tower without them is randomly initialised, with a warning)."""
    return [
        WeightFile("model.visual.weights", visual.weights, "ViT-B-32.pt, CLIP's two towers", CLIP_SOURCE),
        WeightFile("model.audio.weights", audio.weights, "CLAP's audio and text branches", CLAP_SOURCE),
        WeightFile(
            "model.text.tokenizer",
            text.tokenizer,
            "the CLAP text branch's RoBERTa tokenizer",
            TOKENIZER_SOURCE,
            required=True,
            contents=("vocab.json", "merges.txt"),
        ),
    ]


def clip_openai_state(clip: torch.nn.Module, cfg: CLIPConfig) -> dict[str, torch.Tensor]:
    """An open_clip ``CLIP``'s weights as OpenAI's file holds them: fp16, plus the three integer
    entries of the archive."""
    state = {k: v.detach().half() for k, v in clip.state_dict().items() if k != "attn_mask"}
    state["input_resolution"] = torch.tensor(cfg.img_size)
    state["context_length"] = torch.tensor(cfg.context_length)
    state["vocab_size"] = torch.tensor(cfg.vocab_size)
    return state


def laion_clap_state(
    audio: torch.nn.Module, projection: torch.nn.Module, text: torch.nn.Module
) -> dict[str, torch.Tensor]:
    """CLAP's towers (:func:`~.clap.clap_towers`) in the LAION file's keys, ``module.`` prefixed:
    HTS-AT merges patches at the end of a stage where timm starts the next one with it."""
    state: dict[str, torch.Tensor] = {}
    for key, value in audio.state_dict().items():
        parts = key.split(".")
        if parts[0] == "layers" and parts[2] == "downsample":
            parts[1] = str(int(parts[1]) - 1)
        state["module.audio_branch." + ".".join(parts)] = value
    state.update({f"module.audio_projection.{k}": v for k, v in projection.state_dict().items()})
    for key, value in text.state_dict().items():
        name = "text_branch." + key[len("roberta.") :] if key.startswith("roberta.") else key
        state[f"module.{name}"] = value
    positions = text.roberta.config.max_position_embeddings
    state["module.text_branch.embeddings.position_ids"] = torch.arange(positions)[None]
    return {k: v.detach().clone() for k, v in state.items()}


def _learn_merges(words: list[str], count: int) -> list[tuple[str, str]]:
    """Byte-level BPE merges learned greedily on ``words`` (most frequent pair first, ties by the
    pair), at most ``count``."""
    symbols = _byte_symbols()
    seqs = [[symbols[b] for b in (("" if i == 0 else " ") + w).encode()] for i, w in enumerate(words)]
    merges: list[tuple[str, str]] = []
    while len(merges) < count:
        pairs = Counter(p for s in seqs for p in zip(s, s[1:]))
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        for s in seqs:
            i = 0
            while i < len(s) - 1:
                if (s[i], s[i + 1]) == best:
                    s[i : i + 2] = [s[i] + s[i + 1]]
                i += 1
    return merges


def write_roberta_tokenizer(folder: Path, vocab_size: int) -> Path:
    """``vocab.json`` + ``merges.txt`` of a byte-level BPE with exactly ``vocab_size`` entries
    (roberta-base's special tokens and order); merges learned on a few words, then pairs of bytes."""
    symbols = _byte_symbols()
    base = 4 + len(symbols) + 1  # <s> <pad> </s> <unk>, the bytes, <mask>
    if vocab_size < base:
        raise ValueError(f"a byte-level RoBERTa vocabulary needs at least {base} entries, got {vocab_size}")
    vocab = {tok: i for i, tok in enumerate(("<s>", "<pad>", "</s>", "<unk>", *symbols))}
    merges: list[tuple[str, str]] = []
    last = vocab_size - 1  # <mask> takes the last id
    for a, b in _learn_merges(_CORPUS.split(), last - len(vocab)):
        if a + b not in vocab:
            vocab[a + b] = len(vocab)
            merges.append((a, b))
    pairs = ((a, b) for a in symbols for b in symbols)
    while len(vocab) < last:  # large vocabularies: pairs of byte symbols not yet in it
        a, b = next(pairs)
        if a + b not in vocab:
            vocab[a + b] = len(vocab)
            merges.append((a, b))
    vocab["<mask>"] = len(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(
        folder / "merges.txt", ("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)).encode()
    )
    atomic_write_bytes(folder / "vocab.json", json.dumps(vocab, ensure_ascii=False).encode("utf-8"))
    return folder


def write_random_files(
    visual: CLIPConfig,
    audio: CLAPAudioConfig,
    text: ClipClapTextConfig,
    keys: set[str] | None = None,
    seed: int = 0,
) -> list[Path]:
    """Random files of the configs' shapes at the paths they name (only those of the recipe
    ``keys``; all when None). The values depend only on the shapes and ``seed``: files written
    again are the same files."""
    written: list[Path] = []
    wanted = {f.key for f in clip_clap_weight_files(visual, audio, text)} if keys is None else keys
    with torch.random.fork_rng(devices=[]):
        if "model.visual.weights" in wanted and visual.weights:
            torch.manual_seed(seed)
            clip = build_clip(visual)
            with atomic_output(visual.weights) as tmp:
                torch.save(clip_openai_state(clip, visual), tmp)
            written.append(Path(visual.weights))
        if "model.audio.weights" in wanted and audio.weights:
            torch.manual_seed(seed + 1)
            towers = clap_towers(audio, text, False)
            with atomic_output(audio.weights) as tmp:
                torch.save({"state_dict": laion_clap_state(*towers)}, tmp)
            written.append(Path(audio.weights))
    if "model.text.tokenizer" in wanted and text.tokenizer:
        size = int({**ROBERTA_BASE, **text.roberta}["vocab_size"])
        written.append(write_roberta_tokenizer(Path(text.tokenizer), size))
    return written
