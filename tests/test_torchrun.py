"""`torchrun -m dgsct_cli train` with 2 CPU processes (gloo): one run folder, resumable."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest


def _torchrun(*args: str, cwd) -> subprocess.CompletedProcess:
    # Static rendezvous on a free loopback port (no c10d rendezvous store to negotiate).
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2"]
    cmd += ["--master_addr", "127.0.0.1", "--master_port", str(port)]
    cmd += ["-m", "dgsct_cli", "--quiet", "train", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    try:
        return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        err = (exc.stderr or b"").decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        raise AssertionError(f"torchrun timed out\nSTDOUT:\n{out[-3000:]}\nSTDERR:\n{err[-6000:]}") from None


@pytest.mark.slow
def test_torchrun_two_processes_train_and_resume(tmp_path):
    data, run = tmp_path / "data", tmp_path / "run"
    common = ["--data", str(data), "--output", str(run)]
    first = _torchrun(
        *common,
        "--recipe",
        "ave-tiny",
        "--synthetic",
        "data.synthetic_videos=8",
        "train.epochs=1",
        "train.loggers=[jsonl,tensorboard]",
        cwd=tmp_path,
    )
    assert first.returncode == 0, first.stderr[-3000:]
    # Rank 0 alone wrote the dataset, the checkpoints and the log; rank 1 printed nothing.
    assert (data / "manifest.json").is_file()
    assert (run / "last.safetensors").is_file() and (run / "trainer_state.pt").is_file()
    assert first.stdout.count("done: 1 epoch,") == 1
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1

    second = _torchrun(*common, "--resume", "train.epochs=2", cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2]
    # Only rank 0 logs: one TensorBoard event file per process start, each step once.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 2
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("step/loss")] == list(range(1, lines[-1]["step"] + 1))
    assert [e.step for e in acc.Scalars("val/accuracy")] == [x["step"] for x in lines]
