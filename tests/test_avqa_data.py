"""MUSIC-AVQA data: tokenisation and vocabularies against the release (real json files and
hand-made records), the negative sampler, the frame rule, both layouts of ``prepare avqa``
(bad records, missing and corrupt media, resume, the cleaned annotations) and the datasets."""

from __future__ import annotations

import ast
import gzip
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DATA, FIXTURES, IMAGENET

from dgsct_cli.data.avqa import (
    ANSWER_VOCAB,
    AVQA_MAX_WORDS,
    QUESTION_VOCAB,
    AVQARecord,
    build_vocabularies,
    canonical_vocabularies,
    draw_negatives,
    encode_question,
    prepare_avqa,
    question_words,
    read_avqa_json,
)
from dgsct_cli.data.lines import LineProblems
from dgsct_cli.data.video import linspace_1fps

AVQA_DATA = DATA / "avqa"


@pytest.fixture(scope="module")
def ref():
    return torch.load(FIXTURES / "avqa" / "tokenize_vocab.pt", weights_only=True)


def real_json(tmp_path: Path, split: str, folder: str = "json") -> Path:
    """A real annotation file from the fixtures, decompressed."""
    out = tmp_path / folder / f"avqa-{split}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(gzip.decompress((AVQA_DATA / folder / f"avqa-{split}.json.gz").read_bytes()))
    return out


# -- vocabularies and tokenisation --------------------------------------------------------------------


def test_the_canonical_vocabularies_are_the_release_files(ref):
    assert list(QUESTION_VOCAB) == ref["ques_vocab"] and len(QUESTION_VOCAB) == 93
    assert list(ANSWER_VOCAB) == ref["ans_vocab"] and len(ANSWER_VOCAB) == 42
    # ques_vocab.txt lists its 93 words twice; reading it gives them once, in order.
    assert len(ref["ques_vocab_file_raw"]) == 186
    from_files = canonical_vocabularies(AVQA_DATA)
    assert from_files.questions == list(QUESTION_VOCAB) and from_files.answers == list(ANSWER_VOCAB)
    assert canonical_vocabularies(None).questions == list(QUESTION_VOCAB)


@pytest.mark.parametrize("split", ["val", "test"])
def test_real_questions_tokenise_as_the_release_tokenises_them(tmp_path, ref, split):
    want = ref[split]
    records = read_avqa_json(real_json(tmp_path, split))
    assert len(records) == want["n_records"]  # every record reads, none fails (n_records_failing 0)
    words = {w: i for i, w in enumerate(QUESTION_VOCAB)}
    answers = {a: i for i, a in enumerate(ANSWER_VOCAB)}
    ids = [encode_question(r.words, words) for r in records]  # all tokenise with the file vocab
    assert max(len(r.words) for r in records) == want["max_words"] == AVQA_MAX_WORDS
    picked = want["record_index"].tolist()
    assert [records[i].question_id for i in picked] == want["question_id"].tolist()
    assert torch.equal(torch.tensor([ids[i] for i in picked]), want["question_tokens"])
    assert torch.equal(torch.tensor([answers[records[i].answer] for i in picked]), want["answer_index"])


def test_hand_made_records_tokenise_or_fail_as_in_the_release(ref):
    words = {w: i for i, w in enumerate(QUESTION_VOCAB)}
    for i, case in enumerate(ref["hand"]):
        values = ast.literal_eval(case["templ_values"])
        if "words_error" in case:  # fewer template values than placeholders: IndexError there
            with pytest.raises(ValueError, match="placeholder"):
                question_words(case["question_content"], values)
            continue
        got = question_words(case["question_content"], values)
        assert got == [w for w in case["words"] if w != "<pad>"], i
        if case.get("question_error"):  # KeyError there (no unknown-word id): a clear ValueError here
            with pytest.raises(ValueError, match="not in the question vocabulary"):
                encode_question(got, words)
        elif len(got) > AVQA_MAX_WORDS:  # the release does not truncate (17 ids, no batch)
            assert len(case["question_tokens"]) == len(got) == 17
            with pytest.raises(ValueError, match="17 words, more than the 14"):
                encode_question(got, words)
        else:
            assert torch.equal(torch.tensor(encode_question(got, words)), case["question_tokens"]), i
        if case["answer_index"] >= 0:
            assert ANSWER_VOCAB.index(case["anser"]) == case["answer_index"]
        elif not case.get("question_error"):
            assert case["anser"] not in ANSWER_VOCAB  # "maybe": KeyError there, reported here


def _record(words: str, answer: str, video: str = "00000001", index: int = 0) -> AVQARecord:
    return AVQARecord(
        index, video, index, ("Audio", "Counting"), words + "?", (), answer, tuple(words.split())
    )


def test_a_train_json_extends_the_vocabularies_after_the_canonical_ones():
    train = [
        _record("Is there a kazoo sound", "maybe"),
        _record("Is there a piano sound", "yes"),
        _record("Is the kazoo louder than the theremin", "perhaps"),
    ]
    vocab = build_vocabularies(train)
    assert vocab.questions[:93] == list(QUESTION_VOCAB) and vocab.questions[93:] == ["kazoo", "theremin"]
    assert vocab.answers[:42] == list(ANSWER_VOCAB) and vocab.answers[42:] == ["maybe", "perhaps"]
    assert vocab.added_words == ["kazoo", "theremin"] and vocab.added_answers == ["maybe", "perhaps"]
    assert "added 2 word(s)" in vocab.describe() and "released checkpoint does not fit" in vocab.describe()
    unchanged = build_vocabularies([_record("Is there a piano sound", "yes")])
    assert unchanged.questions == list(QUESTION_VOCAB) and not unchanged.added_answers


def test_bad_records_are_reported_with_file_and_record(tmp_path):
    path = tmp_path / "avqa-val.json"
    good = {
        "video_id": "00000001",
        "question_id": 5,
        "type": '["Audio", "Counting"]',
        "question_content": "Is there a <Object> sound?",
        "templ_values": '["piano"]',
        "anser": "yes",
    }
    path.write_text(
        json.dumps(
            [good, {**good, "question_id": 6, "templ_values": "[oops"}, {**good, "video_id": "../x"}, 7]
        )
    )
    problems = LineProblems(strict=False)
    records = read_avqa_json(path, problems)
    assert [r.question_id for r in records] == [5]
    assert problems.messages[0].startswith(
        f"{path}: record 1 (question_id 6): 'templ_values' is not a list literal"
    )
    assert "record 2 (question_id 5): invalid video_id" in problems.messages[1]
    assert problems.messages[2] == f"{path}: record 3: not a JSON object"
    with pytest.raises(ValueError, match="record 1"):
        read_avqa_json(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_avqa_json(path)


# -- negatives and frames ---------------------------------------------------------------------------


def test_negatives_keep_the_release_quirk_and_the_fixed_rule_never_picks_the_same_video():
    rng = random.Random(0)
    first = [v for _ in range(300) for v, _ in draw_negatives(0, 20, rng, "release")]
    assert min(first) >= 6  # r // 60 == 0 rejects frames 0..59, i.e. videos 0..5
    eighth = [v for _ in range(300) for v, _ in draw_negatives(8, 20, rng, "release")]
    assert 8 in eighth  # ST-AVQA's 60-frame test lets a negative come from the video itself
    fixed = [v for _ in range(300) for v, _ in draw_negatives(8, 20, rng, "other_video")]
    assert 8 not in fixed and set(fixed) == set(range(20)) - {8}


def test_negatives_are_random_randint_draws_split_into_video_and_slot():
    got = draw_negatives(3, 7, random.Random(42), "release")
    rng, want = random.Random(42), []
    while len(want) < 10:
        r = rng.randint(0, 69)
        if r // 60 != 3:
            want.append(divmod(r, 10))
    assert got == want
    with pytest.raises(ValueError, match="no negative frame can be drawn"):
        draw_negatives(0, 1, random.Random(0), "other_video")
    with pytest.raises(ValueError, match="negative rule"):
        draw_negatives(0, 5, random.Random(0), "nearest")


def test_the_1fps_frame_rule_reads_linspace_of_the_whole_seconds():
    indices, starts = linspace_1fps(num_frames=1500, fps=25.0, num_segments=10)  # a 60-s clip
    seconds = np.linspace(1, 60, 10).astype(int)
    assert seconds.tolist() == [1, 7, 14, 20, 27, 33, 40, 46, 53, 60]
    assert indices.tolist() == np.floor((seconds - 0.5) * 25 + 0.5).astype(int).tolist()
    assert starts.tolist() == (seconds - 1).tolist()  # 1-s windows centred on the frames
    short, _ = linspace_1fps(num_frames=100, fps=25.0, num_segments=10)  # 4 s
    assert short.tolist() == [13, 13, 13, 38, 38, 38, 63, 63, 63, 88]  # round half up


# -- prepare: the pre-extracted layout ------------------------------------------------------------------


def _q(
    video: str, qid: int, content: str, values: list[str], answer: str, qtype=("Audio", "Counting")
) -> dict:
    return {
        "video_id": video,
        "question_id": qid,
        "type": json.dumps(list(qtype)),
        "question_content": content,
        "templ_values": json.dumps(values),
        "question_deleted": 0,
        "anser": answer,
    }


def _write_jpg(path: Path, value: int) -> None:
    from torchvision.io import write_jpeg

    path.parent.mkdir(parents=True, exist_ok=True)
    write_jpeg(torch.full((3, 40, 48), value, dtype=torch.uint8), str(path), quality=95)


def write_extracted_root(root: Path, frames: dict[str, int]) -> None:
    """The release's layout: frames/<id>/%08d.jpg (frame k has brightness 4k), audio_wave/<id>.npy."""
    for vid, n in frames.items():
        for k in range(1, n + 1):
            _write_jpg(root / "frames" / vid / f"{k:08d}.jpg", 4 * k)
        (root / "audio_wave").mkdir(parents=True, exist_ok=True)
        np.save(root / "audio_wave" / f"{vid}.npy", np.full(320000, 0.01 * int(vid[-1]), np.float32))
    q = "Is there a <Object> sound?"
    splits = {
        "train": [
            _q("00000001", 1, q, ["piano"], "yes"),
            _q("00000002", 2, q, ["kazoo"], "maybe"),  # a new word and a new answer: extension
            _q("va000003", 3, "What kind of musical instrument is it?", [], "cello", ("Visual", "Location")),
            _q("00000004", 4, q, ["piano"], "no"),  # its frames are corrupt
        ],
        "val": [
            _q("00000001", 5, q, ["cello"], "no"),
            _q("00000002", 6, "Is there a theremin sound?", [], "no"),  # unknown word in val: skipped
            _q("00000005", 7, q, ["piano"], "yes"),  # no media at all
        ],
        "test": [
            _q("00000002", 8, "Is the <Object> louder than the <Object>?", ["piano", "cello"], "yes"),
            _q("00000001", 9, "Is there a voiceover?", [], "no", ("Audio-Visual", "Existential")),
        ],
    }
    for split, rows in splits.items():
        (root / "json").mkdir(parents=True, exist_ok=True)
        (root / "json" / f"avqa-{split}.json").write_text(json.dumps(rows))
    (root / "json_update").mkdir(exist_ok=True)
    for split in ("train", "val"):
        (root / "json_update" / f"avqa-{split}.json").write_text(
            (root / "json" / f"avqa-{split}.json").read_text()
        )
    (root / "json_update" / "avqa-test.json").write_text(json.dumps(splits["test"][:1]))


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    root = tmp_path_factory.mktemp("avqa-root")
    write_extracted_root(root, {"00000001": 23, "00000002": 10, "va000003": 12, "00000004": 10})
    (root / "frames" / "00000004" / "00000005.jpg").write_bytes(b"not a jpeg")
    out = root.parent / (root.name + "-cache")
    summary = prepare_avqa(root, out, workers=2, image_size=32, progress=False)
    return root, out, summary


def test_prepare_reads_the_extracted_layout_and_reports_what_it_skips(extracted):
    root, out, summary = extracted
    manifest = json.loads((out / "manifest.json").read_text())
    info = manifest["info"]
    assert info["layout"] == "frames" and info["annotations"] == "json"
    assert info["question_vocab"][93:] == ["kazoo"] and manifest["class_names"][42:] == ["maybe"]
    assert "added 1 word(s)" in summary.details["vocabulary"]
    # Bad records and videos are reported with their file and reason; nothing is fatal.
    assert any(
        "record 1 (question_id 6): word 'theremin' is not in the question vocabulary" in m
        for m in summary.bad_lines
    )
    skipped = {s.video_id: s.reason for s in summary.skipped}
    assert skipped["00000005"] == "missing" and skipped["00000004"].startswith("corrupt: 00000005.jpg")
    report = json.loads((out / "prepare_report.json").read_text())
    assert report["vocabulary"]["added_answers"] == ["maybe"] and len(report["bad_lines"]) == 1
    by_id = {s["id"]: s for s in manifest["samples"]}
    assert sorted(by_id) == [
        "test-00000",
        "test-00001",
        "train-00000",
        "train-00001",
        "train-00002",
        "val-00000",
    ]
    kazoo = by_id["train-00001"]["targets"]
    assert kazoo["question"][:5] == [24, 36, 37, 93, 19] and kazoo["answer"] == [42]
    assert by_id["test-00001"]["targets"]["question_type"] == [4] and by_id["test-00001"]["targets"][
        "record"
    ] == [1]


def test_prepare_takes_the_release_frames_and_the_audio_as_it_is(extracted):
    _, out, _ = extracted
    frames = np.load(out / "frames" / "00000001.npy")
    assert frames.shape == (10, 32, 32, 3)
    picked = np.linspace(1, 23, 10).astype(int)  # the jpg numbers the release reads
    assert np.abs(frames[..., 0].mean((1, 2)) - 4 * picked).max() <= 2  # brightness 4k, jpeg-rounded
    audio = np.load(out / "audio" / "00000001.npy")
    assert audio.shape == (320000,) and audio.dtype == np.float32 and np.allclose(audio, 0.01)


def test_prepare_resumes_and_reads_the_cleaned_annotations(extracted):
    root, out, _ = extracted
    again = prepare_avqa(root, out, workers=1, image_size=32, progress=False)
    assert again.decoded == 0 and again.reused == 3
    cleaned = out.parent / (out.name + "-update")
    summary = prepare_avqa(root, cleaned, image_size=32, annotations="json_update", progress=False)
    manifest = json.loads((cleaned / "manifest.json").read_text())
    assert manifest["info"]["annotations"] == "json_update" and summary.split_samples["test"] == 1
    with pytest.raises(ValueError, match="--annotations must be one of json, json_update"):
        prepare_avqa(root, cleaned, annotations="json_new", progress=False)


def test_prepare_without_a_train_json_uses_the_canonical_vocabularies(tmp_path):
    root = tmp_path / "root"
    write_extracted_root(root, {"00000001": 10, "00000002": 10})
    (root / "json" / "avqa-train.json").unlink()
    summary = prepare_avqa(root, tmp_path / "out", image_size=32, progress=False)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert sorted(manifest["splits"]) == ["test", "val"]
    assert "left out" in summary.details["train split"]
    assert manifest["info"]["question_vocab"] == list(QUESTION_VOCAB)
    assert manifest["class_names"] == list(ANSWER_VOCAB)
    assert len(summary.bad_lines) == 1 and "theremin" in summary.bad_lines[0]


# -- datasets ----------------------------------------------------------------------------------------


def test_datasets_of_both_stages(extracted):
    from dgsct_cli.config import load_recipe
    from dgsct_cli.data.manifest import PreparedCache
    from dgsct_cli.tasks.base import get_task

    _, out, _ = extracted
    cache = PreparedCache(out)
    recipe = load_recipe("avqa-tiny")
    train = get_task("avqa").open_dataset(cache, "train", recipe.model, recipe.data)
    item = train[1]
    assert item["frames"].shape == item["negative_frames"].shape == (10, 3, 32, 32)
    assert item["audio"].shape == (10, 32000) and item["question"].shape == (14,)
    assert item["question"].dtype == torch.long and item["answer"].tolist() == [42]
    val = get_task("avqa").open_dataset(cache, "val", recipe.model, recipe.data)
    assert "negative_frames" not in val[0]  # evaluation reads the answer alone

    stage1 = load_recipe("avqa-grounding-tiny")
    grounding = get_task("avqa-grounding").open_dataset(cache, "train", stage1.model, stage1.data)
    assert grounding.videos == ["00000001", "00000002"]  # real (numeric) videos only
    assert len(grounding) == 20 and grounding.sample_ids[11] == "00000002/1"
    g = grounding[11]
    assert g["frames"].shape == g["negative_frames"].shape == (1, 3, 32, 32) and g["audio"].shape == (
        1,
        32000,
    )
    frames = torch.from_numpy(np.load(out / "frames" / "00000002.npy")).permute(0, 3, 1, 2).float() / 255
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in (IMAGENET["mean"], IMAGENET["std"]))
    torch.testing.assert_close(g["frames"][0], (frames[1] - mean) / std)
    # The negative is a frame of the other video.
    other = torch.from_numpy(np.load(out / "frames" / "00000001.npy")).permute(0, 3, 1, 2).float() / 255
    assert any(torch.allclose(g["negative_frames"][0], (f - mean) / std) for f in other)


def test_an_items_negatives_do_not_depend_on_the_worker_that_reads_it(extracted):
    """Loader workers draw each item's negatives from the epoch's base seed and the item, so a run
    resumed mid-epoch (other items per worker) sees the same negatives."""
    from torch.utils.data import DataLoader

    from dgsct_cli.config import load_recipe
    from dgsct_cli.data.manifest import PreparedCache
    from dgsct_cli.tasks.base import get_task

    _, out, _ = extracted
    recipe = load_recipe("avqa-tiny", ["model.head.negatives=other_video"])
    train = get_task("avqa").open_dataset(PreparedCache(out), "train", recipe.model, recipe.data)

    def negatives(order: list[int]) -> dict[int, torch.Tensor]:
        loader = DataLoader(
            train, batch_size=1, sampler=order, num_workers=2, generator=torch.Generator().manual_seed(7)
        )
        return {int(b["index"]): b["negative_frames"][0] for b in loader}

    whole, resumed = negatives([0, 1, 2]), negatives([1, 2])
    assert all(torch.equal(whole[i], resumed[i]) for i in (1, 2))
