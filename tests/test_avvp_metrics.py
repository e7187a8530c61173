"""AVVP evaluation (tasks-release.md §A.6) on hand-made cases and the LLP annotation files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console

from dgsct_cli.tasks.avvp_metrics import (
    AVVP_CLASSES,
    SCORE_KEYS,
    _match_events,
    _runs,
    format_parsing_table,
    parsing_scores,
    read_avvp_ground_truth,
)

AVVP_DATA = Path(__file__).resolve().parent / "fixtures" / "data" / "avvp"
T, C = 10, 4


def _case(n: int = 1, c: int = C) -> dict[str, np.ndarray]:
    """Empty predictions/ground truth with the video filter open for every class."""
    return {
        "video_prob": np.ones((n, c)),
        "audio_frame_prob": np.zeros((n, T, c)),
        "visual_frame_prob": np.zeros((n, T, c)),
        "gt_audio": np.zeros((n, T, c)),
        "gt_visual": np.zeros((n, T, c)),
    }


def _seg(*idx: int) -> np.ndarray:
    v = np.zeros(T)
    v[list(idx)] = 1
    return v


def test_empty_predictions_and_ground_truth_score_100() -> None:
    scores = parsing_scores(**_case(n=3))
    assert list(scores) == list(SCORE_KEYS)
    assert all(v == 100.0 for v in scores.values())


def test_accepts_torch_tensors() -> None:
    case = {k: torch.from_numpy(v).float() for k, v in _case(n=2).items()}
    assert parsing_scores(**case)["segment_av"] == 100.0


def test_segment_level_only_counts_predicted_or_present_classes() -> None:
    case = _case()
    # Audio class 0: GT segments 0-3, predicted 2-5 -> TP 2, FP 2, FN 2 -> F = 0.5. Other classes
    # have neither predictions nor GT, so they do not dilute the mean.
    case["gt_audio"][0, 0:4, 0] = 1
    case["audio_frame_prob"][0, 2:6, 0] = 0.9
    s = parsing_scores(**case)
    assert s["segment_audio"] == pytest.approx(50.0)
    assert s["segment_visual"] == 100.0  # nothing predicted or present
    assert s["segment_av"] == 100.0


def test_video_level_filter_zeroes_a_class_in_both_modalities() -> None:
    case = _case()
    case["gt_audio"][0, :, 1] = 1
    case["gt_visual"][0, :, 1] = 1
    case["audio_frame_prob"][0, :, 1] = 0.99
    case["visual_frame_prob"][0, :, 1] = 0.99
    assert parsing_scores(**case)["segment_audio"] == 100.0
    case["video_prob"][0, 1] = 0.49  # below threshold: every frame prediction of class 1 is removed
    s = parsing_scores(**case)
    for key in ("segment_audio", "segment_visual", "segment_av", "event_audio", "event_visual", "event_av"):
        assert s[key] == 0.0
    case["video_prob"][0, 1] = 0.5  # >= is inclusive
    assert parsing_scores(**case)["segment_audio"] == 100.0


def test_events_are_maximal_runs() -> None:
    assert _runs(_seg(0, 1, 3, 4, 9).astype(bool)) == [(0, 2), (3, 5), (9, 10)]
    assert _runs(np.zeros(T, dtype=bool)) == []
    assert _runs(np.ones(T, dtype=bool)) == [(0, T)]
    case = _case()
    case["gt_audio"][0, :, 0] = _seg(0, 1)
    case["audio_frame_prob"][0, :, 0] = _seg(0, 1, 3, 4)  # two predicted events: one TP, one FP
    s = parsing_scores(**case)
    assert s["event_audio"] == pytest.approx(100 * 2 / 3)
    assert s["segment_audio"] == pytest.approx(100 * 4 / 6)


def test_event_iou_threshold_is_inclusive_half() -> None:
    case = _case()
    case["gt_audio"][0, 0:4, 0] = 1
    case["audio_frame_prob"][0, 0:2, 0] = 1  # |p∩g| = 2 = 0.5 * |p∪g| = 0.5 * 4 -> match
    assert parsing_scores(**case)["event_audio"] == 100.0
    case["audio_frame_prob"][0, :, 0] = _seg(3, 4, 5)  # inter 1, union 6 -> no match: FP 1, FN 1
    assert parsing_scores(**case)["event_audio"] == 0.0


def test_event_matching_is_not_one_to_one() -> None:
    # Runs from one binary vector cannot overlap, so two of them never match the same GT event; the
    # rule itself (any match makes a TP, GT is FN only if unmatched) is checked on interval lists.
    assert _match_events([(0, 4), (1, 5)], [(0, 5)]) == (2, 0, 0)
    assert _match_events([(0, 5)], [(0, 4), (1, 5)]) == (1, 0, 0)
    assert _match_events([(0, 2), (6, 8)], [(0, 3)]) == (1, 1, 0)
    assert _match_events([], [(0, 3)]) == (0, 0, 1)
    assert _match_events([(4, 5)], []) == (0, 1, 0)


def test_event_at_av_pools_counts_and_type_is_mean() -> None:
    case = _case()
    # Class 0 audio: GT 0-1, predicted 0 only -> segment TP 1, FN 1 (F = 2/3).
    case["gt_audio"][0, 0:2, 0] = 1
    case["audio_frame_prob"][0, 0, 0] = 1
    # Class 0 visual: GT and prediction 0-8 -> TP 9 (F = 1).
    case["gt_visual"][0, 0:9, 0] = 1
    case["visual_frame_prob"][0, 0:9, 0] = 1
    s = parsing_scores(**case)
    assert s["segment_audio"] == pytest.approx(100 * 2 / 3)
    assert s["segment_visual"] == pytest.approx(100.0)
    # Pooled class 0: TP 10, FN 1 -> 20/21, which is not the mean of A and V (5/6).
    assert s["segment_event"] == pytest.approx(100 * 20 / 21)
    assert s["segment_event"] != pytest.approx((s["segment_audio"] + s["segment_visual"]) / 2)
    # AV: GT 0-1, prediction 0 -> 2/3.
    assert s["segment_av"] == pytest.approx(100 * 2 / 3)
    for level in ("segment", "event"):
        mean3 = (s[f"{level}_audio"] + s[f"{level}_visual"] + s[f"{level}_av"]) / 3
        assert s[f"{level}_type"] == pytest.approx(mean3)


def test_every_video_counts_in_the_mean() -> None:
    case = _case(n=2)
    case["gt_audio"][0, :, 0] = 1  # video 0 misses its only event; video 1 is empty (scores 1.0)
    assert parsing_scores(**case)["segment_audio"] == pytest.approx(50.0)


def _reference(case: dict[str, np.ndarray]) -> dict[str, float]:
    """Straightforward per-video, per-class loops written from §A.6, to cross-check the vectorised code."""

    def f_of(counts: list[tuple[int, int, int]]) -> float:
        fs = [2 * tp / (2 * tp + fn + fp) for tp, fp, fn in counts if tp + fp != 0 or tp + fn != 0]
        return float(np.mean(fs)) if fs else 1.0

    def seg(p: np.ndarray, g: np.ndarray) -> tuple[int, int, int]:
        return int((p * g).sum()), int((p * (1 - g)).sum()), int(((1 - p) * g).sum())

    def evt(p: np.ndarray, g: np.ndarray) -> tuple[int, int, int]:
        return _match_events(_runs(p.astype(bool)), _runs(g.astype(bool)))

    per: dict[str, list[float]] = {k: [] for k in SCORE_KEYS}
    for i in range(case["video_prob"].shape[0]):
        o = (case["video_prob"][i] >= 0.5).astype(int)
        sa = ((case["audio_frame_prob"][i] >= 0.5) * o).T
        sv = ((case["visual_frame_prob"][i] >= 0.5) * o).T
        ga, gv = case["gt_audio"][i].T, case["gt_visual"][i].T
        for level, fn in (("segment", seg), ("event", evt)):
            ca = [fn(sa[c], ga[c]) for c in range(sa.shape[0])]
            cv = [fn(sv[c], gv[c]) for c in range(sa.shape[0])]
            cav = [fn(sa[c] * sv[c], ga[c] * gv[c]) for c in range(sa.shape[0])]
            per[f"{level}_audio"].append(f_of(ca))
            per[f"{level}_visual"].append(f_of(cv))
            per[f"{level}_av"].append(f_of(cav))
            pooled = [tuple(x + y for x, y in zip(a, v, strict=True)) for a, v in zip(ca, cv, strict=True)]
            per[f"{level}_event"].append(f_of(pooled))
    out = {k: 100 * float(np.mean(v)) for k, v in per.items() if v}
    for level in ("segment", "event"):
        out[f"{level}_type"] = (out[f"{level}_audio"] + out[f"{level}_visual"] + out[f"{level}_av"]) / 3
    return out


def test_matches_loop_reference_on_random_cases() -> None:
    rng = np.random.default_rng(0)
    n, c = 200, 25
    case = {
        "video_prob": rng.random((n, c)),
        "audio_frame_prob": rng.random((n, T, c)) ** 3,
        "visual_frame_prob": rng.random((n, T, c)) ** 3,
        "gt_audio": (rng.random((n, T, c)) < 0.1).astype(np.float32),
        "gt_visual": (rng.random((n, T, c)) < 0.1).astype(np.float32),
    }
    case["gt_audio"][:20] = 0  # some videos without any GT, like the 5 test videos without audio rows
    got, ref = parsing_scores(**case), _reference(case)
    for k in SCORE_KEYS:
        assert got[k] == pytest.approx(ref[k], abs=1e-9), k


def test_shape_mismatch_raises() -> None:
    case = _case()
    case["gt_visual"] = np.zeros((1, T, C + 1))
    with pytest.raises(ValueError):
        parsing_scores(**case)


def test_read_ground_truth_small_csv(tmp_path: Path) -> None:
    header = "filename\tonset\toffset\tevent_labels\n"
    audio = tmp_path / "audio.csv"
    audio.write_text(
        header
        + "vidA_0_10\t0\t4\tDog\n"  # segments 0-3 (half-open)
        + "vidA_0_10\t2\t6\tDog\n"  # overlaps: sets 1s again
        + "vidA_0_10\t9\t9\tCat\n"  # offset <= onset: nothing
        + "vidA_0_10\t9\t0\tCat\n"
        + "unknown_0_10\t0\t10\tSpeech\n"  # not in the split: ignored
        + "Baby_cry_infant_cry\t0\t4\tSpeech\n"
        + "vidB_5_15\t7\t10\tSpeech\n"
    )
    visual = tmp_path / "visual.csv"
    visual.write_text(header + "vidB_5_15\t0\t1\tClapping\n")
    ga, gv = read_avvp_ground_truth(audio, visual, ["vidA_0_10", "vidB_5_15", "vidC_1_11"], AVVP_CLASSES)
    assert ga.shape == gv.shape == (3, 10, 25)
    dog, speech, clap = (AVVP_CLASSES.index(n) for n in ("Dog", "Speech", "Clapping"))
    np.testing.assert_array_equal(ga[0, :, dog], [1, 1, 1, 1, 1, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(ga[1, :, speech], [0] * 7 + [1] * 3)
    assert ga.sum() == 6 + 3 and ga[2].sum() == 0
    np.testing.assert_array_equal(gv[1, :, clap], [1] + [0] * 9)
    assert gv.sum() == 1


def test_classes_are_release_order() -> None:
    assert len(AVVP_CLASSES) == 25 and len(set(AVVP_CLASSES)) == 25
    assert AVVP_CLASSES[:5] == ["Speech", "Car", "Cheering", "Dog", "Cat"]
    assert AVVP_CLASSES[5] == "Frying_(food)" and AVVP_CLASSES[24] == "Clapping"


def test_read_ground_truth_on_llp_test_split() -> None:
    lines = (AVVP_DATA / "AVVP_test_pd.csv").read_text().splitlines()[1:]
    names = [line.split("\t")[0] for line in lines if line.strip()]
    assert len(names) == 1200
    ga, gv = read_avvp_ground_truth(
        AVVP_DATA / "AVVP_eval_audio.csv", AVVP_DATA / "AVVP_eval_visual.csv", names, AVVP_CLASSES
    )
    assert ga.shape == gv.shape == (1200, 10, 25)
    # §A.1: 5 test videos have no audio row and 121 have no visual row. One more video's audio GT is
    # all zero too: its only audio row (`H5WcJwyjxIg_2_12  0  0`) is an empty slice.
    empty_audio = [names[i] for i in np.flatnonzero(ga.reshape(1200, -1).sum(1) == 0)]
    assert len(empty_audio) == 6 and "H5WcJwyjxIg_2_12" in empty_audio
    assert int((gv.reshape(1200, -1).sum(1) == 0).sum()) == 121
    # Perfect predictions (video filter open for the GT classes) score 100 everywhere.
    video_prob = np.maximum(ga.max(1), gv.max(1))
    assert all(v == pytest.approx(100.0) for v in parsing_scores(video_prob, ga, gv, ga, gv).values())


def test_format_parsing_table() -> None:
    scores = dict(
        zip(SCORE_KEYS, [59.04, 59.4, 52.8, 57.06, 57.0, 49.2, 56.1, 46.1, 50.47, 49.1], strict=True)
    )
    console = Console(record=True, width=120)
    console.print(format_parsing_table(scores))
    text = console.export_text()
    for needle in (
        "Segment-level",
        "Event-level",
        "Type@AV",
        "Event@AV",
        "Audio-Visual",
        "59.0",
        "57.1",
        "50.5",
    ):
        assert needle in text
