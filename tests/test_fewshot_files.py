"""Tiny CLIP, CLAP and RoBERTa files in the real layouts, for the few-shot tests (no tests here).
The CLAP layout is the package's (dgsct_cli/models/encoders/clip_clap_files.py, which the tiny
recipes use to write theirs); these add the values and extra keys the tests check.

- CLIP: an OpenAI-layout state dict (``ViT-B-32.pt`` as a plain file) and a TorchScript archive
  (the published format), from open_clip's model at tiny widths (multiples of 64);
- CLAP: the LAION layout ``{'state_dict': {'module.<key>': tensor}}`` with the fusion layers the
  release drops and ``text_branch.embeddings.position_ids``;
- RoBERTa's tokenizer: the tiny ``vocab.json`` + ``merges.txt`` of tests/fixtures/release/fewshot/.
"""

from __future__ import annotations

import json
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from dgsct_cli.models.encoders.clap import CLAPAudioConfig, ClipClapTextConfig, clap_towers
from dgsct_cli.models.encoders.clip import CLIPConfig, build_clip
from dgsct_cli.models.encoders.clip_clap_files import laion_clap_state

TOKENIZER = Path(__file__).resolve().parent / "fixtures" / "release" / "fewshot" / "tiny_roberta"
TINY_VOCAB = len(json.loads((TOKENIZER / "vocab.json").read_text()))

TINY_CLIP = dict(img_size=32, patch_size=16, width=64, layers=12, embed_dim=32, text_width=64, text_layers=1,
                 context_length=20, vocab_size=49408)  # fmt: skip
TINY_CLAP = dict(n_fft=256, hop_length=320, mel_bins=16, spec_size=64, embed_dim=16, depths=[2, 2, 6, 2],
                 num_heads=[1, 1, 2, 2], window_size=4, time_mask=8, freq_mask=2, projection_dim=32)  # fmt: skip
TINY_ROBERTA = dict(vocab_size=TINY_VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=64, max_position_embeddings=40)  # fmt: skip


def laion_layout(audio: torch.nn.Module, projection, text, fusion: bool = True) -> dict[str, torch.Tensor]:
    """CLAP modules' weights in the LAION file layout (the package's writer), with the extra
    layers the published file has and the release drops by name."""
    state = laion_clap_state(audio, projection, text)
    state["module.text_transform.sequential.0.weight"] = torch.zeros(32, 32)
    if fusion:  # the fusion checkpoint's extra layers, which the release drops by name
        state["module.audio_branch.patch_embed.mel_conv2d.weight"] = torch.zeros(16, 1, 4, 12)
        state["module.audio_branch.patch_embed.fusion_model.local_att.0.weight"] = torch.zeros(4, 16, 1, 1)
    state["module.audio_branch.tscam_conv.weight"] = torch.zeros(5, 16 * 8, 2, 3)
    state["module.audio_branch.head.weight"] = torch.zeros(5, 5)
    return state


def write_tiny_files(folder: Path, seed: int = 0, torchscript: bool = False) -> dict[str, Path]:
    """``clip`` (OpenAI layout; a TorchScript archive with ``torchscript``), ``clap`` (LAION layout)
    and ``tokenizer`` (a folder with vocab.json + merges.txt) under ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    clip = build_clip(CLIPConfig(**TINY_CLIP)).eval()
    with torch.no_grad():
        clip.logit_scale.fill_(2.0)
    if torchscript:
        # OpenAI's archives hold the causal mask as a constant, not a buffer: make it one here too,
        # so the archive's state dict has exactly the OpenAI keys.
        traced_clip = build_clip(CLIPConfig(**TINY_CLIP)).eval()
        traced_clip.load_state_dict(clip.state_dict())
        mask = traced_clip.attn_mask
        del traced_clip._buffers["attn_mask"]
        object.__setattr__(traced_clip, "attn_mask", mask)
        image, text = torch.zeros(1, 3, 32, 32), torch.zeros(1, 20, dtype=torch.long)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(traced_clip, (image, text), strict=False, check_trace=False)
            traced.save(str(folder / "ViT-B-32.pt"))
    else:
        torch.save({**clip.state_dict(), "input_resolution": torch.tensor(32)}, folder / "ViT-B-32.pt")
    audio, projection, text = clap_towers(
        CLAPAudioConfig(**TINY_CLAP, front_end="weights", final_norm=True),
        ClipClapTextConfig(roberta=TINY_ROBERTA, projection_dim=32),
        False,
    )
    with torch.no_grad():
        text.logit_scale_a.fill_(1.5)
        audio.logmel_extractor.melW.mul_(1.5)  # not the computed matrix: it must come from the file
    torch.save({"state_dict": laion_layout(audio, projection, text)}, folder / "clap.pt")
    tokenizer = folder / "roberta"
    if not tokenizer.exists():
        shutil.copytree(TOKENIZER, tokenizer)
    return {"clip": folder / "ViT-B-32.pt", "clap": folder / "clap.pt", "tokenizer": tokenizer}


def tiny_overrides(files: dict[str, Path]) -> list[str]:
    """Recipe overrides that turn a full-size few-shot recipe into the tiny model of these files."""
    out = [f"model.visual.weights={files['clip']}", f"model.audio.weights={files['clap']}",
           f"model.text.tokenizer={files['tokenizer']}"]  # fmt: skip
    out += [f"model.visual.{k}={json.dumps(v, separators=(',', ':'))}" for k, v in TINY_CLIP.items()]
    out += [f"model.audio.{k}={json.dumps(v, separators=(',', ':'))}" for k, v in TINY_CLAP.items()]
    out += [f"model.text.roberta.{k}={json.dumps(v, separators=(',', ':'))}" for k, v in TINY_ROBERTA.items()]
    out += ["model.text.projection_dim=32", "model.head.clap_max_length=24"]
    # 2 s per segment fits the tiny front end; small batches on 2 CPU cores.
    out += ["data.segment_tiling=2", "data.num_workers=0", "train.eval_batch_size=4"]
    return out


# -- shared by the few-shot and zero-shot test modules (their data: conftest.py) ---------------------


@contextmanager
def single_thread():
    """Tiny models on 2 shared cores: one intra-op thread is several times faster than two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def one_thread():
    with single_thread():
        yield
