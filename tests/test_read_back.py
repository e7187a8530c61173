"""The training loop leaves each batch's loss and accuracy counts on the device and reads them back
a few batches at a time on a GPU (train.read_back_interval): a read-back is a host sync. The numbers logged and
stored are the same as reading every batch."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from rich.console import Console

from dgsct_cli import loggers, train
from dgsct_cli.config import load_recipe
from dgsct_cli.tasks.avs import pixel_accuracy_counts

TIMING = ("seconds", "samples_per_second")  # key endings of wall-time numbers


def test_read_numbers_gives_what_float_and_int_give():
    values = [
        torch.tensor(1 / 3),
        torch.tensor(1 / 3, dtype=torch.float64),
        torch.tensor(1 / 3, dtype=torch.bfloat16),
        torch.tensor(2**40 + 1),
        torch.tensor(True).sum(),
        7,
        2.5,
        torch.tensor(0.1),
    ]
    expected = [int(v) if not v.is_floating_point() else float(v) for v in values[:5]] + [
        7,
        2.5,
        float(values[7]),
    ]
    read = train.read_numbers(values)
    assert read == expected and [type(x) for x in read] == [type(x) for x in expected]


def test_pixel_counts_stay_on_the_device_and_count_the_annotated_frames():
    g = torch.Generator().manual_seed(0)
    masks = (torch.rand(2, 3, 4, 4, generator=g) > 0.5).float()
    logits = torch.randn(6, 1, 4, 4, generator=g)
    valid = torch.tensor([[1, 0, 1], [0, 0, 1]])
    correct, counted = pixel_accuracy_counts({"mask_logits": logits}, {"masks": masks, "mask_valid": valid})
    assert isinstance(correct, torch.Tensor) and isinstance(counted, torch.Tensor)
    agree = (logits.view(2, 3, 4, 4) > 0) == masks.bool()
    assert int(correct) == int(agree[valid.bool()].sum()) and int(counted) == 3 * 16


def _run(data: Path, out: Path, every: int, monkeypatch) -> tuple[list[dict], list[dict], int]:
    """Metrics lines, per-step logger rows and read-backs of a 2-epoch tiny run."""
    monkeypatch.setattr(train, "read_back_interval", lambda device: every)  # CPU: 1 by default
    rows: list[dict] = []
    emit = loggers.RunLogger._emit
    monkeypatch.setattr(
        loggers.RunLogger, "_emit", lambda self, step, row: (rows.append(dict(row)), emit(self, step, row))
    )
    read_backs = []
    read_back = train.Trainer._read_back
    monkeypatch.setattr(
        train.Trainer, "_read_back", lambda self, *a: (read_backs.append(len(a[1])), read_back(self, *a))
    )
    recipe = load_recipe(
        "ave-tiny",
        [
            "data.num_workers=0",
            "train.batch_size=1",
            "train.grad_accum=2",
            "train.epochs=2",
            "train.loggers=[jsonl,tensorboard]",  # per-step rows go to a backend
        ],
    )
    train.Trainer(recipe, data, out, console=Console(quiet=True), show_progress=False).run()
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    strip = lambda d: {k: v for k, v in d.items() if not k.endswith(TIMING)}  # noqa: E731
    return [strip(x) for x in lines], [strip(r) for r in rows], read_backs


def test_reading_back_every_few_batches_changes_no_number(ave_cache, tmp_path, monkeypatch):
    every_batch = _run(ave_cache, tmp_path / "every", 1, monkeypatch)
    monkeypatch.undo()
    every_three = _run(ave_cache, tmp_path / "three", 3, monkeypatch)
    assert every_batch[0] == every_three[0]  # train loss and accuracy, validation, per epoch
    assert every_batch[1] == every_three[1] and every_batch[1]  # per-step loss and lr
    batches = len(every_batch[2]) // 2  # per epoch
    assert set(every_batch[2]) == {1}
    # Every third batch, and the epoch's last (a smaller group when it does not divide).
    assert every_three[2] == 2 * ([3] * (batches // 3) + ([batches % 3] if batches % 3 else []))


def test_the_cpu_reads_back_every_batch_and_a_gpu_every_few():
    assert train.read_back_interval(torch.device("cpu")) == 1
    assert train.read_back_interval(torch.device("cuda")) == train.READ_BACK_EVERY > 1


def test_evaluation_scores_each_batch_after_the_next_forward_in_order():
    from dgsct_cli.evaluate import evaluate

    events: list[str] = []

    class Items(torch.utils.data.Dataset):
        def __len__(self):
            return 5

        def __getitem__(self, i):
            return {"index": torch.tensor(i)}

    class Scorer:
        def update(self, out, batch):
            events.append(f"score {int(batch['index'])}")

        def compute(self):
            return {}

    class Stub:
        def make_evaluator(self, dataset):
            return Scorer()

        def forward(self, model, batch):
            events.append(f"forward {int(batch['index'])}")
            return {"y": batch["index"].float()}

        def prediction_rows(self, out, batch, dataset):
            return [{"i": int(batch["index"])}]

    rows: list[dict] = []
    metrics = evaluate(
        torch.nn.Linear(1, 1), Items(), Stub(), torch.device("cpu"), 1, show_progress=False, predictions=rows
    )
    assert events == ["forward 0"] + [e for i in range(1, 5) for e in (f"forward {i}", f"score {i - 1}")] + [
        "score 4"
    ]
    assert rows == [{"i": i} for i in range(5)] and metrics["num_samples"] == 5
