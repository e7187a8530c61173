"""A small learnable MUSIC-AVQA-format dataset: real ``.mp4`` files and ``json/avqa-*.json``
question records whose answers follow from the media.

Each video shows one instrument (a colour with a stripe pattern) for its whole length and plays
one instrument's tone: in three videos of four the instrument shown, as in MUSIC-AVQA, where the
sound mostly comes from the instrument in view (so stage 1, which tells a video's own frames from
another video's, has something to learn); in the fourth another one. Questions, worded as
MUSIC-AVQA's templates and answered from the media:

- Visual/Location "What kind of musical instrument is it?" -> the instrument shown (every video);
- Audio/Counting "Is there a <Object> sound?" -> yes when <Object> is the instrument heard (every
  video; yes and no equally often);
- Audio-Visual/Existential "Is this sound from the instrument in the video?" -> yes when the
  instrument heard is the one shown (asked of every mismatched video and as many matched ones,
  so yes and no are equally often right).

Video ids are numeric, like MUSIC-AVQA's real videos, so stage 1 reads them too.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .avqa import AVQA_SPLIT_FILES
from .synthetic import MARKER, _check_synthetic_args, _render_audio, _render_frames
from .video import write_mp4

__all__ = ["SYNTHETIC_INSTRUMENTS", "write_synthetic_avqa"]

# Instruments of the synthetic set: words of the question vocabulary and answers, both canonical.
SYNTHETIC_INSTRUMENTS = ("cello", "piano", "flute", "violin")


def _record(
    video_id: str, qid: int, qtype: tuple[str, str], content: str, values: list[str], answer: str
) -> dict:
    return {
        "video_id": video_id,
        "question_id": qid,
        "type": json.dumps(list(qtype)),
        "question_content": content,
        "templ_values": json.dumps(values),
        "question_deleted": 0,
        "anser": answer,
    }


def write_synthetic_avqa(
    root: str | Path,
    num_videos: int = 24,
    image_size: int = 64,
    fps: int = 4,
    seconds: int = 10,
    sample_rate: int = 32000,
    seed: int = 0,
) -> Path:
    """Write ``<root>/json/avqa-{train,val,test}.json`` and ``<root>/videos/<id>.mp4`` (about
    60/20/20 of the videos per split, each split non-empty). Deterministic for a given ``seed``;
    refuses to overwrite annotation files it did not write."""
    k = len(SYNTHETIC_INSTRUMENTS)
    _check_synthetic_args(k, k, num_videos, image_size, seconds, 60, sample_rate)
    root = Path(root)
    json_dir, video_dir = root / "json", root / "videos"
    if any((json_dir / name).exists() for name in AVQA_SPLIT_FILES.values()) and not (root / MARKER).exists():
        raise ValueError(
            f"{root}: holds AVQA annotation files not written by write_synthetic_avqa; refusing to overwrite"
        )
    json_dir.mkdir(parents=True, exist_ok=True)
    video_dir.mkdir(parents=True, exist_ok=True)
    (root / MARKER).write_text("written by dgsct_cli.data.avqa_synthetic.write_synthetic_avqa\n")

    rng = np.random.default_rng(seed)
    n_eval = max(1, round(0.2 * num_videos))
    order = rng.permutation(num_videos)
    split_of = ["train"] * num_videos
    for i in order[:n_eval]:
        split_of[i] = "val"
    for i in order[n_eval : 2 * n_eval]:
        split_of[i] = "test"

    # Within each split, videos 3, 7, 11, ... (in order) play another instrument's tone; the
    # existential question is asked of them and of videos 0, 4, 8, ..., which play their own.
    rank = {}
    for split in AVQA_SPLIT_FILES:
        for j, i in enumerate(i for i in range(num_videos) if split_of[i] == split):
            rank[i] = j % 4

    records: dict[str, list[dict]] = {split: [] for split in AVQA_SPLIT_FILES}
    qid = 0
    for i in range(num_videos):
        video_id = f"{i + 1:08d}"
        shown = i % k
        heard = int((shown + rng.integers(1, k)) % k) if rank[i] == 3 else shown
        frames = _render_frames([shown] * seconds, k, image_size, fps, rng)
        audio = _render_audio([heard] * seconds, sample_rate, rng)
        write_mp4(video_dir / f"{video_id}.mp4", frames, fps, audio, sample_rate)

        asked = heard if rng.random() < 0.5 else int((heard + rng.integers(1, k)) % k)
        questions = [
            (
                ("Visual", "Location"),
                "What kind of musical instrument is it?",
                [],
                SYNTHETIC_INSTRUMENTS[shown],
            ),
            (
                ("Audio", "Counting"),
                "Is there a <Object> sound?",
                [SYNTHETIC_INSTRUMENTS[asked]],
                "yes" if asked == heard else "no",
            ),
            (
                ("Audio-Visual", "Existential"),
                "Is this sound from the instrument in the video?",
                [],
                "yes" if heard == shown else "no",
            ),
        ]
        if rank[i] not in (0, 3):
            questions.pop()  # existential: only as many "yes" as "no"
        for qtype, content, values, answer in questions:
            qid += 1
            records[split_of[i]].append(_record(video_id, qid, qtype, content, values, answer))
    for split, name in AVQA_SPLIT_FILES.items():
        (json_dir / name).write_text(json.dumps(records[split], indent=2) + "\n")
    return root
