"""MUSIC-AVQA (AVQA): annotation reader, question tokenisation, vocabularies, cache preparation
and the datasets of both training stages.

Two raw layouts are accepted (``prepare_avqa`` detects which):

- the release's pre-extracted layout::

      <root>/json/avqa-{train,val,test}.json     (or json_update/, the cleaned annotations)
      <root>/frames/<video_id>/%08d.jpg          1 fps, numbered from 1
      <root>/audio_wave/<video_id>.npy           320,000 samples at 32 kHz (10 x 1 s)
      <root>/ques_vocab.txt, ans_vocab.txt       optional (the canonical order is built in)

- raw MUSIC-AVQA videos: the same json folder and ``<video_id>.mp4`` in ``<root>``, ``videos/``
  or MUSIC-AVQA's ``MUSIC-AVQA-videos-{Real,Synthetic}/``, decoded once (frame rule
  ``linspace_1fps`` of ``data/video.py``).

A sample is one question record; many records share a video, which is stored once. The cache's
``class_names`` are the answers; the question vocabulary, the templates and the annotation set
live in the manifest's ``info``.
"""

from __future__ import annotations

import ast
import json
import random
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from .. import __version__
from .datasets import SegmentDataset, frames_to_tensor
from .decode import cached_video_ok, decode_videos_to_cache, read_in_threads
from .lines import LineProblems
from .manifest import (
    MANIFEST_NAME,
    PreparedCache,
    array_path,
    atomic_save_npy,
    build_manifest,
    npy_problem,
    remove_stale_temp_files,
    valid_video_id,
    write_manifest,
)
from .report import PrepareSummary, SkippedVideo, raise_on_empty_split, write_prepare_report
from .video import resize_frames

__all__ = [
    "ANNOTATION_SETS",
    "ANSWER_VOCAB",
    "AVQA_MAX_WORDS",
    "AVQA_NUM_SEGMENTS",
    "AVQADataset",
    "AVQARecord",
    "AVQA_SPLIT_FILES",
    "GroundingDataset",
    "NEGATIVE_RULES",
    "QUESTION_TYPES",
    "QUESTION_VOCAB",
    "Vocabularies",
    "build_vocabularies",
    "draw_negatives",
    "encode_question",
    "is_real_video",
    "prepare_avqa",
    "question_words",
    "read_avqa_json",
    "template_key",
]

AVQA_NUM_SEGMENTS = 10
AVQA_MAX_WORDS = 14  # the release pads to 14 and never truncates (dataloader_avst.py:69)
AVQA_SAMPLE_RATE = 32000
AVQA_SPLIT_FILES = {"train": "avqa-train.json", "val": "avqa-val.json", "test": "avqa-test.json"}
# json/: what the release reads (net_grd_avst/base_options.py:27-32); json_update/: the cleaned set.
ANNOTATION_SETS = ("json", "json_update")
PAD = "<pad>"

# The canonical index orders: the release's data/AVQA/ques_vocab.txt (its first 93 lines; the file
# lists them twice) and data/AVQA/ans_vocab.txt. Released checkpoints depend on these orders.
QUESTION_VOCAB: tuple[str, ...] = (
    "<pad>", "How", "many", "instruments", "are", "sounding", "in", "the", "video", "What", "kind",
    "of", "instrument", "is", "leftest", "musical", "it", "did", "not", "sound", "from", "beginning",
    "to", "end", "Is", "on", "left", "louder", "than", "right", "guzheng", "types", "accordion",
    "always", "playing", "clarinet", "there", "a", "voiceover", "this", "cello", "violin", "flute",
    "pipa", "piano", "Which", "that", "sounds", "at", "same", "time", "as", "acoustic_guitar", "Where",
    "first", "electric_bass", "drum", "more", "rhythmic", "ukulele", "banjo", "saxophone", "trumpet",
    "erhu", "middle", "congas", "entire", "tuba", "bagpipe", "loudest", "comes", "xylophone", "bassoon",
    "suona", "second", "appeared", "performance", "rightest", "coming", "third", "last", "Are", "and",
    "makes", "before", "after", "lowest", "fourth", "longer", "fifth", "were", "heard", "throughout",
)  # fmt: skip
ANSWER_VOCAB: tuple[str, ...] = (
    "two", "cello", "congas", "zero", "no", "pipa", "six", "yes", "one", "four", "three", "seven",
    "five", "ukulele", "right", "piano", "left", "accordion", "clarinet", "guzheng", "more than ten",
    "nine", "indoor", "saxophone", "drum", "violin", "middle", "outdoor", "bagpipe", "bassoon",
    "acoustic_guitar", "banjo", "electric_bass", "ten", "eight", "flute", "simultaneously", "trumpet",
    "erhu", "xylophone", "tuba", "suona",
)  # fmt: skip
# The nine (type[0], type[1]) pairs the release's test() breaks down by (main_avst.py:141-224).
QUESTION_TYPES: tuple[tuple[str, str], ...] = (
    ("Audio", "Counting"),
    ("Audio", "Comparative"),
    ("Visual", "Counting"),
    ("Visual", "Location"),
    ("Audio-Visual", "Existential"),
    ("Audio-Visual", "Counting"),
    ("Audio-Visual", "Location"),
    ("Audio-Visual", "Comparative"),
    ("Audio-Visual", "Temporal"),
)
OTHER_TYPE = -1  # a type outside the nine: counted in the overall accuracy only, as the release does


# --------------------------------------------------------------------------- tokenisation


def question_words(content: str, values: Sequence[str]) -> list[str]:
    """The words of a question as the release reads them (dataloader_avst.py:230-243): strip the
    right end, split on single spaces, drop the last character of the last word (whatever it is:
    '?', the full-width '？' or a letter), then fill each word containing '<' with the next
    template value. Extra values are ignored; too few raise ``ValueError``."""
    words = content.rstrip().split(" ")
    words[-1] = words[-1][:-1]
    slots = [i for i, w in enumerate(words) if "<" in w]
    if len(slots) > len(values):
        raise ValueError(
            f"{len(slots)} placeholder(s) in the question but templ_values has {len(values)} value(s)"
        )
    for i, value in zip(slots, values):
        words[i] = value
    return words


def encode_question(
    words: Sequence[str], index: Mapping[str, int], max_words: int = AVQA_MAX_WORDS
) -> list[int]:
    """Word ids padded with ``<pad>`` (id 0) to ``max_words``. The release has no unknown-word id
    (a KeyError there) and does not truncate (a longer question cannot be batched): both are
    ``ValueError`` here, naming the word or the length."""
    if len(words) > max_words:
        raise ValueError(f"{len(words)} words, more than the {max_words} the model reads")
    ids = []
    for w in words:
        if w not in index:
            raise ValueError(f"word {w!r} is not in the question vocabulary (there is no unknown-word id)")
        ids.append(index[w])
    return ids + [index[PAD]] * (max_words - len(ids))


def user_question_ids(
    text: str, vocab: Sequence[str], max_words: int = AVQA_MAX_WORDS
) -> tuple[list[str], list[int]]:
    """A question typed by a person as the model's word ids: split on whitespace, a final "?"
    dropped, each word matched exactly, else lower-case or capitalised, and two words joined by
    "_" when the vocabulary has them so ("acoustic guitar" -> ``acoustic_guitar``). An unknown word
    is a ``ValueError`` naming it and the closest words (the model has no unknown-word id)."""
    import difflib

    index = {w: i for i, w in enumerate(vocab)}
    raw = text.strip().rstrip("?？").replace(",", " ").split()
    if not raw:
        raise ValueError("--question is empty")
    words: list[str] = []
    unknown: list[str] = []
    i = 0
    while i < len(raw):
        if i + 1 < len(raw):
            joined = f"{raw[i]}_{raw[i + 1]}"
            match = next((w for w in (joined, joined.lower()) if w in index), None)
            if match is not None:
                words.append(match)
                i += 2
                continue
        word = raw[i]
        match = next((w for w in (word, word.lower(), word.capitalize()) if w in index), None)
        if match is None:
            unknown.append(word)
        else:
            words.append(match)
        i += 1
    if unknown:
        hints = []
        for word in unknown:
            close = difflib.get_close_matches(word, [w for w in vocab if w != PAD], n=3, cutoff=0.6)
            hints.append(f"{word!r}" + (f" (closest: {', '.join(close)})" if close else ""))
        raise ValueError(
            f"--question: {'; '.join(hints)} not in the model's question vocabulary of "
            f"{len(vocab) - 1} words (MUSIC-AVQA's templates; there is no unknown-word id)"
        )
    if len(words) > max_words:
        raise ValueError(f"--question: {len(words)} words, more than the {max_words} the model reads")
    return words, encode_question(words, index, max_words)


def template_key(content: str) -> str:
    """The template a question was made from (its text with placeholders, last character dropped
    as the tokeniser does), e.g. ``Is there a <Object> sound``."""
    return content.rstrip()[:-1]


def is_real_video(video_id: str) -> bool:
    """MUSIC-AVQA's real videos have numeric ids; its synthetic ones a letter prefix (va, vv, sa,
    ev, es). Stage 1 of the release reads real videos only (grounding_gen/dataloader_grd_gen.py:78)."""
    return video_id.isdigit()


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class AVQARecord:
    """One question record of ``avqa-<split>.json`` (the key ``anser`` is spelled so there)."""

    index: int  # position in its json file
    video_id: str
    question_id: int
    type: tuple[str, ...]
    content: str
    values: tuple[str, ...]
    answer: str
    words: tuple[str, ...]

    @property
    def type_index(self) -> int:
        key = tuple(self.type[:2])
        return QUESTION_TYPES.index(key) if key in QUESTION_TYPES else OTHER_TYPE


def _literal_list(value: Any, key: str) -> list[str]:
    """``type`` and ``templ_values`` are strings holding a list (the release parses them with
    ``ast.literal_eval``); a list is accepted as it is."""
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise ValueError(f"'{key}' is not a list literal: {value[:60]!r}") from None
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"'{key}' must be a list of strings, got {str(value)[:60]!r}")
    return list(value)


def parse_record(raw: Any, index: int) -> AVQARecord:
    """Check one json record; raises ``ValueError`` naming the field and the problem."""
    if not isinstance(raw, dict):
        raise ValueError("not a JSON object")
    for key in ("video_id", "question_content", "anser"):
        if not isinstance(raw.get(key), str):
            raise ValueError(f"'{key}' must be a string, got {raw.get(key)!r}"[:120])
    video_id = raw["video_id"]
    if not valid_video_id(video_id):
        raise ValueError(f"invalid video_id {video_id[:60]!r} (it names a file)")
    qid = raw.get("question_id")
    if not isinstance(qid, int) or isinstance(qid, bool):
        raise ValueError(f"'question_id' must be an integer, got {qid!r}")
    if not raw["question_content"].strip():
        raise ValueError("empty question_content")
    qtype = _literal_list(raw.get("type", "[]"), "type")
    if len(qtype) < 2:
        raise ValueError(f"'type' must name a modality and a kind, got {qtype!r}")
    values = _literal_list(raw.get("templ_values", "[]"), "templ_values")
    words = question_words(raw["question_content"], values)
    return AVQARecord(
        index, video_id, qid, tuple(qtype), raw["question_content"], tuple(values), raw["anser"], tuple(words)
    )


def read_avqa_json(path: Path, problems: LineProblems | None = None) -> list[AVQARecord]:
    """The records of one ``avqa-<split>.json``; a bad record is reported to ``problems`` as
    ``<file>: record <i> (question_id <q>): <problem>`` and skipped (raised without it)."""
    problems = problems or LineProblems(strict=True)
    try:
        data = json.loads(path.read_bytes().decode("utf-8-sig"))
    except OSError as exc:
        raise ValueError(f"{path}: cannot be read ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of question records")
    records = []
    for i, raw in enumerate(data):
        try:
            records.append(parse_record(raw, i))
        except ValueError as exc:
            qid = raw.get("question_id") if isinstance(raw, dict) else None
            problems.add(f"{path}: record {i}{f' (question_id {qid})' if qid is not None else ''}: {exc}")
    return records


# --------------------------------------------------------------------------- vocabularies


@dataclass
class Vocabularies:
    """Question words (index 0 = ``<pad>``) and answers, canonical first, then what a train json
    added (the release builds both from the train json in order of first appearance,
    dataloader_avst.py:41-66; the canonical files are those lists)."""

    questions: list[str]
    answers: list[str]
    added_words: list[str] = field(default_factory=list)
    added_answers: list[str] = field(default_factory=list)
    source: str = "built-in copy of the release's ques_vocab.txt / ans_vocab.txt"

    @property
    def word_index(self) -> dict[str, int]:
        return {w: i for i, w in enumerate(self.questions)}

    @property
    def answer_index(self) -> dict[str, int]:
        return {a: i for i, a in enumerate(self.answers)}

    def describe(self) -> str:
        text = f"{len(self.questions)} question words, {len(self.answers)} answers ({self.source})"
        if self.added_words or self.added_answers:
            text += (
                f"; the train json added {len(self.added_words)} word(s) {self.added_words[:8]} and "
                f"{len(self.added_answers)} answer(s) {self.added_answers[:8]} after the canonical ones "
                "(a released checkpoint does not fit this vocabulary)"
            )
        return text


def _vocab_file(path: Path) -> list[str]:
    """A vocabulary file: one entry a line, repeats dropped (ques_vocab.txt lists its words twice)."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot be read ({exc})") from None
    out: list[str] = []
    for line in lines:
        if line and line not in out:
            out.append(line)
    if not out:
        raise ValueError(f"{path}: empty vocabulary file")
    return out


def canonical_vocabularies(root: Path | None = None) -> Vocabularies:
    """The canonical orders: ``<root>/ques_vocab.txt`` and ``ans_vocab.txt`` when both are there,
    else the built-in copy of the release's files."""
    if root is not None and (root / "ques_vocab.txt").is_file() and (root / "ans_vocab.txt").is_file():
        questions = _vocab_file(root / "ques_vocab.txt")
        if questions[0] != PAD:
            raise ValueError(f"{root / 'ques_vocab.txt'}: the first word must be {PAD} (id 0)")
        return Vocabularies(questions, _vocab_file(root / "ans_vocab.txt"), source=f"{root}/*_vocab.txt")
    return Vocabularies(list(QUESTION_VOCAB), list(ANSWER_VOCAB))


def build_vocabularies(train: Iterable[AVQARecord], canonical: Vocabularies | None = None) -> Vocabularies:
    """The canonical vocabularies, extended (after the canonical entries, in order of first
    appearance) by the words and answers of the train records that they lack."""
    base = canonical or Vocabularies(list(QUESTION_VOCAB), list(ANSWER_VOCAB))
    vocab = Vocabularies(list(base.questions), list(base.answers), source=base.source)
    words, answers = set(vocab.questions), set(vocab.answers)
    for record in train:
        for w in record.words:
            if w not in words:
                words.add(w)
                vocab.questions.append(w)
                vocab.added_words.append(w)
        if record.answer not in answers:
            answers.add(record.answer)
            vocab.answers.append(record.answer)
            vocab.added_answers.append(record.answer)
    return vocab


# --------------------------------------------------------------------------- negatives

# "release": reject while r // 60 equals the video's index (dataloader_avst.py:196-199, a
# quirk from ST-AVQA's 60-frame layout: the negative can come from the same video);
# "other_video": reject while r // num_segments does (a frame of another video, as stage 1 does).
NEGATIVE_RULES = ("release", "other_video")


def draw_negatives(
    video_index: int,
    num_videos: int,
    rng: random.Random,
    rule: str = "release",
    count: int = AVQA_NUM_SEGMENTS,
) -> list[tuple[int, int]]:
    """``count`` negative frames as ``(video index, frame slot)``: each draws ``r`` uniformly from
    ``0 .. num_segments * num_videos - 1`` (Python ``random.randint``, as the release) until the
    rule accepts it; the frame is slot ``r % 10`` of video ``r // 10``."""
    if rule not in NEGATIVE_RULES:
        raise ValueError(f"negative rule must be one of {NEGATIVE_RULES}, got {rule!r}")
    segments = AVQA_NUM_SEGMENTS
    total = segments * num_videos
    block = 60 if rule == "release" else segments
    rejected = len(range(video_index * block, min((video_index + 1) * block, total)))
    if total - rejected <= 0:
        raise ValueError(
            f"no negative frame can be drawn for video {video_index} of {num_videos} "
            f"(rule {rule!r}); the split needs frames of other videos"
        )
    out = []
    for _ in range(count):
        while True:
            r = rng.randint(0, total - 1)
            if r // block != video_index:
                break
        out.append((r // segments, r % segments))
    return out


# --------------------------------------------------------------------------- preparation


@dataclass
class _Layout:
    kind: str  # "frames" (pre-extracted) or "videos"
    annotations: Path
    video_dirs: tuple[Path, ...] = ()


def _detect_layout(root: Path, annotations: str) -> _Layout:
    if annotations not in ANNOTATION_SETS:
        raise ValueError(f"--annotations must be one of {', '.join(ANNOTATION_SETS)}, got {annotations!r}")
    if not root.is_dir():
        raise ValueError(f"{root}: MUSIC-AVQA root folder not found")
    json_dir = root / annotations
    if not json_dir.is_dir():
        raise ValueError(
            f"{root}: missing the {annotations}/ folder with avqa-train.json, avqa-val.json and avqa-test.json"
        )
    if (root / "frames").is_dir() and (root / "audio_wave").is_dir():
        return _Layout("frames", json_dir)
    dirs = (root, root / "videos", root / "MUSIC-AVQA-videos-Real", root / "MUSIC-AVQA-videos-Synthetic")
    return _Layout("videos", json_dir, dirs)


def _video_file(layout: _Layout, video_id: str) -> Path:
    for d in layout.video_dirs:
        path = d / f"{video_id}.mp4"
        if path.is_file():
            return path
    return layout.video_dirs[1] / f"{video_id}.mp4"


def _read_jpeg(path: Path) -> np.ndarray:
    from torchvision.io import ImageReadMode, decode_image, read_file

    return decode_image(read_file(str(path)), mode=ImageReadMode.RGB).permute(1, 2, 0).numpy()


def _extracted_video(root: Path, video_id: str, out: Path, image_size: int) -> str | None:
    """Copy one video of the pre-extracted layout into the cache; returns a failure reason or None.

    Frames ``linspace(1, N, 10)`` (truncated) of the N jpgs, as the release reads them
    (dataloader_avst.py:183-190); the audio as it is (10 one-second segments at 32 kHz)."""
    frame_dir = root / "frames" / video_id
    wave_path = root / "audio_wave" / f"{video_id}.npy"
    if not frame_dir.is_dir():
        return "missing"
    if not wave_path.is_file():
        return "no audio (audio_wave/<id>.npy missing)"
    n = sum(1 for p in frame_dir.glob("*.jpg"))
    if n == 0:
        return "corrupt: no jpg frames"
    picked = np.linspace(1, n, AVQA_NUM_SEGMENTS).astype(np.int64)
    frames = []
    for k in picked:
        path = frame_dir / f"{int(k):08d}.jpg"
        if not path.is_file():
            return f"corrupt: {path.name} missing (frames must be numbered 00000001.jpg ... {n:08d}.jpg)"
        try:
            frames.append(_read_jpeg(path))
        except (RuntimeError, ValueError, OSError) as exc:
            return f"corrupt: {path.name}: {' '.join(str(exc).split())[:120]}"
    if len({f.shape for f in frames}) != 1:
        return "corrupt: frames of different sizes"
    try:
        wave = np.load(wave_path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        return f"corrupt: audio_wave/{video_id}.npy: {npy_problem(exc)}"
    length = AVQA_NUM_SEGMENTS * AVQA_SAMPLE_RATE
    if wave.size != length or not np.issubdtype(wave.dtype, np.floating):
        return f"corrupt: audio_wave/{video_id}.npy holds {wave.size} {wave.dtype} values, expected {length} floats"
    wave = np.ascontiguousarray(wave.reshape(-1), dtype=np.float32)
    if not np.isfinite(wave).all():
        return "corrupt: non-finite audio samples"
    atomic_save_npy(array_path(out, "frames", video_id), resize_frames(np.stack(frames), image_size))
    atomic_save_npy(array_path(out, "audio", video_id), wave)
    return None


def _copy_extracted(
    root: Path, video_ids: Sequence[str], out: Path, image_size: int, workers: int, progress: bool, console
) -> tuple[list[str], list[str], dict[str, str]]:
    """(decoded, reused, failed) for the pre-extracted layout; JPEG decoding in a thread pool."""
    (out / "frames").mkdir(parents=True, exist_ok=True)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(out)
    reused = [
        v for v in video_ids if cached_video_ok(out, v, AVQA_NUM_SEGMENTS, image_size, AVQA_SAMPLE_RATE)
    ]
    done = set(reused)
    todo = [v for v in video_ids if v not in done]
    decoded, failed = read_in_threads(
        todo,
        lambda v: _extracted_video(root, v, out, image_size),
        workers,
        "copying MUSIC-AVQA frames and audio",
        progress,
        console,
    )
    return decoded, reused, failed


def prepare_avqa(
    root: str | Path,
    out: str | Path,
    workers: int = 2,
    image_size: int = 192,
    sample_rate: int = AVQA_SAMPLE_RATE,
    annotations: str = "json",
    progress: bool = True,
    console: Console | None = None,
    strict: bool = False,
) -> PrepareSummary:
    """Prepare MUSIC-AVQA under ``root`` (either layout) into a cache at ``out``.

    Question records are read from ``<root>/<annotations>/avqa-<split>.json`` (a split whose file
    is absent is left out and said so; the release snapshot lacks the train json). Records that
    cannot be tokenised (an unknown word or answer in val/test, too few template values, more
    than 14 words) are reported and skipped (``strict``: the first stops the run). Missing or
    corrupt media are reported, never fatal; the run is resumable and every file atomic.
    """
    started = time.monotonic()
    root, out = Path(root), Path(out)
    layout = _detect_layout(root, annotations)
    problems = LineProblems(strict=strict)
    files = {split: layout.annotations / name for split, name in AVQA_SPLIT_FILES.items()}
    present = {split: path for split, path in files.items() if path.is_file()}
    if not present:
        raise ValueError(
            f"{layout.annotations}: none of {', '.join(AVQA_SPLIT_FILES.values())} found (get them from MUSIC-AVQA)"
        )
    records = {split: read_avqa_json(path, problems) for split, path in present.items()}
    details: dict[str, str] = {
        "layout": "pre-extracted frames/ + audio_wave/"
        if layout.kind == "frames"
        else "raw videos (decoded)",
        "annotations": f"{layout.annotations}",
    }
    for split in AVQA_SPLIT_FILES:
        if split not in present:
            details[f"{split} split"] = f"left out: {files[split]} not found"

    vocab = build_vocabularies(records.get("train", []), canonical_vocabularies(root))
    details["vocabulary"] = vocab.describe()
    if (vocab.added_words or vocab.added_answers) and console is not None:
        console.print(f"[yellow]vocabulary: {vocab.describe()}")
    words, answers = vocab.word_index, vocab.answer_index

    # Tokenise every record now (one message per bad record, naming file and record).
    templates: list[str] = []
    usable: dict[str, list[tuple[AVQARecord, list[int]]]] = {}
    other_types = 0
    for split, rows in records.items():
        kept = []
        for r in rows:
            where = f"{present[split]}: record {r.index} (question_id {r.question_id})"
            try:
                ids = encode_question(r.words, words)
                if r.answer not in answers:
                    raise ValueError(f"answer {r.answer!r} is not in the answer vocabulary")
            except ValueError as exc:
                problems.add(f"{where}: {exc}")
                continue
            key = template_key(r.content)
            if key not in templates:
                templates.append(key)
            other_types += r.type_index == OTHER_TYPE
            kept.append((r, ids))
        usable[split] = kept
    if other_types:
        details["question types"] = (
            f"{other_types} record(s) of a type outside the nine (overall accuracy only)"
        )

    video_splits: dict[str, list[str]] = {}
    for split, rows in usable.items():
        for r, _ in rows:
            video_splits.setdefault(r.video_id, [])
            if split not in video_splits[r.video_id]:
                video_splits[r.video_id].append(split)
    out.mkdir(parents=True, exist_ok=True)
    cache_rate = AVQA_SAMPLE_RATE if layout.kind == "frames" else sample_rate

    def account(failed: Mapping[str, str], decoded: int, reused: int) -> tuple[PrepareSummary, list[dict]]:
        skipped = [SkippedVideo(v, reason, list(video_splits[v])) for v, reason in failed.items()]
        summary = PrepareSummary(
            out=out,
            split_samples={split: len(rows) for split, rows in records.items()},
            split_usable={
                split: sum(1 for r, _ in rows if r.video_id not in failed) for split, rows in usable.items()
            },
            videos=len(video_splits),
            decoded=decoded,
            reused=reused,
            skipped=skipped,
            seconds=time.monotonic() - started,
            details=details,
            bad_lines=list(problems.messages),
        )
        write_prepare_report(out, root, summary, "avqa", {"vocabulary": asdict(vocab)})
        hint = (
            f"frames expected in {root / 'frames'} and audio in {root / 'audio_wave'}"
            if layout.kind == "frames"
            else f"videos <video_id>.mp4 expected in {layout.video_dirs[0]} or {layout.video_dirs[1]}"
        )
        raise_on_empty_split(summary, present, hint)
        samples = []
        for split, rows in usable.items():
            for r, ids in rows:
                if r.video_id in failed:
                    continue
                samples.append(
                    {
                        "id": f"{split}-{r.index:05d}",
                        "video_id": r.video_id,
                        "split": split,
                        "targets": {
                            "question": ids,
                            "answer": [answers[r.answer]],
                            "question_type": [r.type_index],
                            "template": [templates.index(template_key(r.content))],
                            "record": [r.index],
                            "question_id": [r.question_id],
                        },
                    }
                )
        return summary, samples

    if layout.kind == "frames":
        decoded, reused, failed = _copy_extracted(
            root, list(video_splits), out, image_size, workers, progress, console
        )
    else:
        videos = {v: _video_file(layout, v) for v in video_splits}
        absent = {v: "missing" for v, path in videos.items() if not path.is_file()}
        if absent:  # fail fast, before decoding, when a whole split's videos are absent
            account(absent, 0, 0)
        outcome = decode_videos_to_cache(
            videos,
            out,
            num_segments=AVQA_NUM_SEGMENTS,
            image_size=image_size,
            sample_rate=cache_rate,
            workers=workers,
            progress=progress,
            console=console,
            description="decoding MUSIC-AVQA videos",
            frame_rule="linspace_1fps",
        )
        decoded, reused, failed = outcome.decoded, outcome.reused, outcome.failed

    summary, samples = account(failed, len(decoded), len(reused))
    manifest = build_manifest(
        dataset="avqa",
        num_segments=AVQA_NUM_SEGMENTS,
        image_size=image_size,
        sample_rate=cache_rate,
        class_names=vocab.answers,
        background_index=None,
        samples=samples,
        split_names=list(records),
        skipped=[asdict(s) for s in summary.skipped],
        created_by=f"dgsct {__version__} prepare avqa",
        info={
            "question_vocab": vocab.questions,
            "added_words": vocab.added_words,
            "added_answers": vocab.added_answers,
            "templates": templates,
            "question_types": ["/".join(t) for t in QUESTION_TYPES],
            "annotations": annotations,
            "layout": layout.kind,
        },
    )
    write_manifest(out / MANIFEST_NAME, manifest)
    return summary


# --------------------------------------------------------------------------- datasets


def cache_info(cache: PreparedCache) -> dict[str, Any]:
    """The AVQA part of a cache's manifest (vocabulary, templates), checked."""
    info = cache.manifest.get("info") or {}
    vocab = info.get("question_vocab")
    if not isinstance(vocab, list) or not vocab or vocab[0] != PAD:
        raise ValueError(
            f"{cache.path / MANIFEST_NAME}: no AVQA question vocabulary in 'info'; re-run 'dgsct prepare avqa'"
        )
    return info


def _split_videos(samples: Iterable[Mapping[str, Any]]) -> list[str]:
    """Distinct video ids in order of first appearance (the release's video_list)."""
    seen: dict[str, None] = {}
    for s in samples:
        seen.setdefault(s["video_id"], None)
    return list(seen)


def _item_rng(i: int, fixed: str | None = None):
    """The generator item ``i`` draws its negatives from (Python ``random``, as the release).

    ``fixed``: one seeded per item (evaluation splits). Otherwise, in the main process, the global
    generator (training seeds it and saves its state); in a DataLoader worker, one seeded by the
    loader's per-epoch base seed and the item, so an item's negatives do not depend on which
    worker reads it (a run resumed mid-epoch draws the same ones)."""
    if fixed is not None:
        return random.Random(f"{fixed}:{i}")
    info = torch.utils.data.get_worker_info()
    return random if info is None else random.Random(f"{info.seed - info.id}:{i}")


class AVQADataset(SegmentDataset):
    """One item per question: the SegmentDataset keys (``frames``, ``audio``, ``index``) and the
    targets ``question [14]``, ``answer [1]``, ``question_type [1]``, ``template [1]``,
    ``record [1]``, ``question_id [1]``; with ``negatives`` also ``negative_frames`` ``[10, 3, H, W]``
    drawn by that rule (:func:`draw_negatives`) among this split's videos with Python's
    ``random``, as the release draws them (see :func:`_item_rng`).
    """

    def __init__(self, cache: PreparedCache, split: str, *, negatives: str | None = None, **kw) -> None:
        super().__init__(cache, split, **kw)
        info = cache_info(cache)
        self.question_vocab: list[str] = list(info["question_vocab"])
        self.templates: list[str] = list(info.get("templates", []))
        self.negatives = negatives
        self.videos = _split_videos(self.samples)
        self._video_index = {v: i for i, v in enumerate(self.videos)}
        if negatives is not None and negatives not in NEGATIVE_RULES:
            raise ValueError(f"negatives must be one of {NEGATIVE_RULES}, got {negatives!r}")

    def _one_frame(self, video_id: str, slot: int) -> torch.Tensor:
        frame = np.array(self.cache.frames(video_id)[slot : slot + 1])
        return frames_to_tensor(frame, self.image_size, self._mean, self._std)[0]

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = super().__getitem__(i)
        if self.negatives is not None:
            vid = self.samples[i]["video_id"]
            drawn = draw_negatives(self._video_index[vid], len(self.videos), _item_rng(i), self.negatives)
            item["negative_frames"] = torch.stack([self._one_frame(self.videos[v], s) for v, s in drawn])
        return item


class GroundingDataset(SegmentDataset):
    """Stage 1 (grounding_gen/dataloader_grd_gen.py:74-250): one item per (video, segment) of the
    split's videos (``real_only``: MUSIC-AVQA's real videos, as the release reads): ``frames``
    ``[1, 3, H, W]`` (the segment's frame), ``negative_frames`` ``[1, 3, H, W]`` (a frame of
    another video), ``audio`` ``[1, samples]`` (the segment, tiled) and ``index``.
    ``sample_ids`` are ``<video_id>/<segment>``."""

    def __init__(
        self, cache: PreparedCache, split: str, *, real_only: bool = True, rng: str | None = None, **kw
    ) -> None:
        super().__init__(cache, split, **kw)
        videos = _split_videos(self.samples)
        self.videos = [v for v in videos if is_real_video(v)] if real_only else videos
        if self.samples and not self.videos:
            raise ValueError(
                f"{cache.path}: split '{split}' has no real MUSIC-AVQA videos (numeric ids); "
                "set model.head.real_only=false to use every video"
            )
        self.rng = rng
        self.sample_ids = [f"{v}/{t}" for v in self.videos for t in range(AVQA_NUM_SEGMENTS)]
        self.class_names = ["mismatch", "match"]
        self.background_index = None

    def __len__(self) -> int:
        return len(self.videos) * AVQA_NUM_SEGMENTS

    _one_frame = AVQADataset._one_frame

    def __getitem__(self, i: int) -> dict[str, Any]:
        v, t = divmod(i, AVQA_NUM_SEGMENTS)
        rng = _item_rng(i, None if self.rng is None else f"{self.rng}:{self.split}")
        ((nv, ns),) = draw_negatives(v, len(self.videos), rng, "other_video", count=1)
        video_id = self.videos[v]
        return {
            "frames": self._one_frame(video_id, t)[None],
            "negative_frames": self._one_frame(self.videos[nv], ns)[None],
            "audio": self._audio(video_id)[t : t + 1],
            "index": i,
        }
