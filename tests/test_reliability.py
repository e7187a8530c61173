"""Nothing lost, nothing silent: Ctrl-C and kills resume exactly, one run per folder, verified
checkpoints, bad recipe values caught at load, one-line errors, bad annotation lines reported."""

from __future__ import annotations

import errno
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import assert_one_line_error, invoke
from rich.console import Console
from safetensors.torch import load_file

from dgsct_cli.config import RecipeError, load_recipe
from dgsct_cli.runs import LOCK_FILE, STATE_DIR
from dgsct_cli.train import STATE_FILE, Trainer, TrainingInterrupted

BASE = ["data.num_workers=0", "train.batch_size=2", "train.epochs=2", "train.grad_accum=2"]


def trainer(data: Path, out: Path, **hooks) -> Trainer:
    recipe = load_recipe("ave-tiny", BASE)
    return Trainer(recipe, data, out, console=Console(quiet=True), show_progress=False, **hooks)


def same_weights(a: Path, b: Path) -> bool:
    x, y = load_file(str(a)), load_file(str(b))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def metric_lines(run: Path) -> list[dict]:
    drop = ("seconds", "samples_per_second")
    return [
        {k: v for k, v in json.loads(line).items() if k not in drop}
        for line in (run / "metrics.jsonl").read_text().splitlines()
    ]


@pytest.fixture(scope="module")
def data(ave_cache) -> Path:
    return ave_cache


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "run"
    trainer(data, out).run()
    return out


# -- 1. Ctrl-C is exact -----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("batch", [1, 4])  # inside an accumulation step of epoch 1; in epoch 2
def test_sigint_in_the_middle_of_a_batch_then_resume_is_bit_identical(data, reference, tmp_path, batch):
    run = tmp_path / "run"
    with pytest.raises(TrainingInterrupted, match="interrupted in epoch"):
        trainer(data, run, test_sigint_at_batch=batch).run()
    state = torch.load(run / STATE_FILE, weights_only=True)
    assert state["progress"]["batch_in_epoch"] > 0  # the running batch finished and counts
    trainer(data, run).run(resume=True)
    assert same_weights(run / "last.safetensors", reference / "last.safetensors")
    assert same_weights(run / "best.safetensors", reference / "best.safetensors")
    assert metric_lines(run) == metric_lines(reference)


@pytest.mark.slow
def test_sigint_during_validation_keeps_the_epoch_and_validates_it_on_resume(data, reference, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(TrainingInterrupted, match="while validating epoch 1"):
        trainer(data, run, test_sigint_in_validation=1).run()
    state = torch.load(run / STATE_FILE, weights_only=True)
    assert state["progress"]["epoch"] == 1 and state["progress"]["pending_validation"]
    assert not (run / "metrics.jsonl").exists() or not (run / "metrics.jsonl").read_text()
    trainer(data, run).run(resume=True)
    assert [m["epoch"] for m in metric_lines(run)] == [1, 2]
    assert metric_lines(run) == metric_lines(reference)
    assert same_weights(run / "last.safetensors", reference / "last.safetensors")
    assert (
        json.loads((run / "best.json").read_text())["best_epoch"]
        == json.loads((reference / "best.json").read_text())["best_epoch"]
    )


# -- 2. weights and state are committed as one ----------------------------------------------------


@pytest.mark.slow
def test_a_kill_between_the_weights_and_the_state_resumes_from_the_previous_pair(data, reference, tmp_path):
    run = tmp_path / "run"
    # Commits: 1 = epoch 1 trained, 2 = epoch 1 validated, 3 = epoch 2 trained (killed half-way).
    with pytest.raises(SystemExit):
        trainer(data, run, test_kill_before_commit=3).run()
    assert (run / STATE_DIR / "weights-000003.safetensors").is_file()  # written, never committed
    state = torch.load(run / STATE_FILE, weights_only=True)
    assert state["weights"] == "weights-000002.safetensors"
    (run / ".tmp-trainer_state.pt.half").write_bytes(b"\x00" * 10)  # a half-written state file
    trainer(data, run).run(resume=True)
    assert [m["epoch"] for m in metric_lines(run)] == [1, 2]  # no epoch redone
    assert metric_lines(run) == metric_lines(reference)
    assert same_weights(run / "last.safetensors", reference / "last.safetensors")
    assert not list(run.glob(".tmp-*"))
    assert [p.name for p in (run / STATE_DIR).iterdir()] == [torch.load(run / STATE_FILE)["weights"]]


def test_resume_without_a_state_says_so_and_creates_nothing(tmp_path):
    result = invoke("train", "--output", tmp_path / "nope", "--resume")
    assert_one_line_error(result, "nothing to resume")
    assert not (tmp_path / "nope").exists()


def test_damaged_trainer_state_or_weights_is_one_line(reference, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(reference, run)
    (run / STATE_FILE).write_bytes(b"garbage")
    assert_one_line_error(invoke("train", "--output", run, "--resume"), "damaged trainer state")
    shutil.copy(reference / STATE_FILE, run / STATE_FILE)
    weights = run / STATE_DIR / torch.load(run / STATE_FILE)["weights"]
    _flip_a_byte(weights)
    assert_one_line_error(invoke("train", "--output", run, "--resume"), "damaged checkpoint")


# -- 3. one run per folder -------------------------------------------------------------------------


def test_a_second_training_on_a_locked_folder_is_refused(data, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        import socket

        owner = {"pid": helper.pid, "host": socket.gethostname(), "started": "now"}
        (run / LOCK_FILE).write_text(json.dumps(owner))
        result = invoke("train", "--recipe", "ave-tiny", "--data", data, "--output", run)
        assert_one_line_error(result, f"pid {helper.pid}", "writes this folder")
        assert not (run / "metrics.jsonl").exists()
    finally:
        helper.kill()
        helper.wait()


@pytest.mark.slow
def test_a_stale_lock_is_taken_over(data, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    import socket

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run / LOCK_FILE).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    result = invoke(
        "--quiet", "train", "--recipe", "ave-tiny", "--data", data, "--output", run, *BASE, "train.epochs=1"
    )
    assert result.exit_code == 0, result.output
    assert not (run / LOCK_FILE).exists()  # released at the end


# -- 4. checkpoints carry a checksum --------------------------------------------------------------


def _flip_a_byte(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[-100] ^= 0x40  # inside the last tensor's data
    path.write_bytes(bytes(raw))


def test_a_checkpoint_with_flipped_bytes_is_refused(data, reference, tmp_path):
    bad = tmp_path / "best.safetensors"
    bad.write_bytes((reference / "best.safetensors").read_bytes())
    _flip_a_byte(bad)
    result = invoke("eval", "--checkpoint", bad, "--data", data, "--split", "val")
    assert_one_line_error(result, str(bad), "damaged checkpoint")


def test_damaged_checkpoint_metadata_is_one_line(data, reference, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(reference / "best.safetensors"), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    for key, value in (
        ("recipe", "{not json"),
        ("recipe", json.dumps({"task": "ave", "train": {"epochs": -1}})),
    ):
        path = tmp_path / "ckpt.safetensors"
        save_file(tensors, str(path), metadata={**meta, key: value})
        result = invoke("eval", "--checkpoint", path, "--data", data, "--split", "val")
        assert_one_line_error(result, str(path))


# -- 5. every recipe value is range-checked when the recipe is read --------------------------------

BAD_VALUES = [
    ("train.max_steps_per_epoch=-1", "train.max_steps_per_epoch", ">= 1"),
    ("train.scheduler.gamma=-3", "train.scheduler.gamma", "> 0"),
    ("train.scheduler.step_size=0", "train.scheduler.step_size", ">= 1"),
    ("model.visual.img_size=0", "model.visual.img_size", ">= 16"),
    ("train.lr=-0.1", "train.lr", "> 0"),
    ("train.lr=.nan", "train.lr", "finite"),
    ("train.weight_decay=-1", "train.weight_decay", ">= 0"),
    ("data.num_workers=-1", "data.num_workers", ">= 0"),
    ("data.segment_tiling=0", "data.segment_tiling", ">= 1"),
    ("train.mixup_alpha=-0.5", "train.mixup_alpha", "> 0"),
    ("train.epochs=0", "train.epochs", ">= 1"),
    ("model.adapter.reduction=0", "model.adapter.reduction", ">= 1"),
    ("model.audio.mel_bins=0", "model.audio.mel_bins", ">= 1"),
    ("train.precision=fp16", "train.precision", "one of"),
]


@pytest.mark.parametrize("override, key, allowed", BAD_VALUES)
def test_bad_recipe_values_are_caught_at_load_naming_the_key(override, key, allowed, tmp_path):
    with pytest.raises(RecipeError) as info:
        load_recipe("ave-tiny", [override])
    message = str(info.value)
    assert "ave-tiny.yaml" in message and key in message and allowed in message
    # Through the CLI: one line, before any data is looked at (the data folder does not exist).
    result = invoke("train", "--recipe", "ave-tiny", "--data", tmp_path / "absent", override)
    assert_one_line_error(result, key)
    assert "absent" not in result.stderr


# -- 6. one line where a traceback was ------------------------------------------------------------


def test_an_unwritable_json_output_fails_before_the_evaluation(data, reference, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = invoke(
        "eval", "--checkpoint", reference, "--data", data, "--split", "val", "--json", blocker / "m.json"
    )
    assert_one_line_error(result, "not a folder")
    assert "accuracy" not in result.stdout


def test_a_full_disk_is_one_line(data, reference, tmp_path, monkeypatch):
    import dgsct_cli.atomic as atomic

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(atomic, "atomic_write_bytes", full)
    result = invoke(
        "eval", "--checkpoint", reference, "--data", data, "--split", "val", "--json", tmp_path / "m.json"
    )
    assert_one_line_error(result, "m.json", "no space left")


def test_prepare_out_under_a_file_is_one_line(tmp_path):
    (tmp_path / "f").write_text("x")
    result = invoke("prepare", "ave", "--synthetic", "--videos", "3", "--out", tmp_path / "f" / "sub")
    assert_one_line_error(result, str(tmp_path / "f"))


# -- 7. a malformed annotation line is reported and skipped ----------------------------------------


def _ave_root_with_bad_lines(tmp_path: Path) -> Path:
    from dgsct_cli.data.synthetic import write_synthetic_ave

    root = write_synthetic_ave(tmp_path / "raw", num_videos=6, image_size=32, seconds=4)
    train = root / "trainSet.txt"
    lines = train.read_text().splitlines()
    lines.insert(1, "Church bell&" + "x" * 300 + "&good&0&4")  # an id too long to be a file name
    lines.insert(2, "Church bell&abc&good&zero&4")
    train.write_bytes("\n".join(lines).encode() + b"\nChurch bell&\xff\xfe&good&0&4\n")
    return root


def test_malformed_annotation_lines_are_skipped_and_reported(tmp_path):
    from dgsct_cli.data.ave import prepare_ave

    root = _ave_root_with_bad_lines(tmp_path)
    summary = prepare_ave(root, tmp_path / "C", workers=1, image_size=32, progress=False)
    assert len(summary.bad_lines) == 3
    assert all(line.startswith(f"{root / 'trainSet.txt'}:") for line in summary.bad_lines)
    assert any("not UTF-8" in line for line in summary.bad_lines)
    report = json.loads((tmp_path / "C" / "prepare_report.json").read_text())
    assert report["bad_lines"] == summary.bad_lines
    result = invoke("prepare", "ave", "--root", root, "--out", tmp_path / "D", "--strict", "--workers", "1")
    assert_one_line_error(result, f"{root / 'trainSet.txt'}:2:", "invalid VideoID")


def test_rerunning_prepare_on_a_complete_cache_writes_nothing(tmp_path, monkeypatch):
    from dgsct_cli.data import manifest
    from dgsct_cli.data.ave import prepare_ave
    from dgsct_cli.data.synthetic import write_synthetic_ave

    root = write_synthetic_ave(tmp_path / "raw", num_videos=3, image_size=32, seconds=3)
    prepare_ave(root, tmp_path / "C", workers=1, image_size=32, progress=False)

    def read_only(path, data):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(manifest, "atomic_write_bytes", read_only)
    summary = prepare_ave(root, tmp_path / "C", workers=1, image_size=32, progress=False)
    assert summary.reused == 3 and summary.decoded == 0


# -- 8. decoding workers die with their parent ---------------------------------------------------


def _children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.add(int(entry.name))
    return found


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_prepare_workers_exit_when_the_parent_is_killed(tmp_path):
    from dgsct_cli.data.synthetic import write_synthetic_ave

    root = write_synthetic_ave(tmp_path / "raw", num_videos=24, image_size=96)
    code = (
        "from dgsct_cli.data.ave import prepare_ave\n"
        "if __name__ == '__main__':\n"
        f"    prepare_ave({str(root)!r}, {str(tmp_path / 'C')!r}, workers=2, progress=False)\n"
    )
    script = tmp_path / "run.py"
    script.write_text(code)
    parent = subprocess.Popen([sys.executable, str(script)])
    workers: set[int] = set()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(workers) < 2:
        workers = {
            p for p in _children(parent.pid) if "multiprocessing" in _cmdline(p) or "spawn" in _cmdline(p)
        }
        time.sleep(0.2)
    assert workers, "no decoding worker started"
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.2)
    assert not any(_alive(p) for p in workers)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_training_leaves_no_sigint_handler_behind():
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
