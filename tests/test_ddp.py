"""Distributed training: 2 gloo CPU processes average to the single-process gradient of the
combined batch; ResumableSampler shards and resumes epochs exactly."""

from __future__ import annotations

import gc
import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import tiny_model_config
from torch.nn.parallel import DistributedDataParallel

from dgsct_cli.distributed import ResumableSampler
from dgsct_cli.factory import create_model
from dgsct_cli.tasks.ave import AVELossConfig, ave_loss

WORLD = 2
BATCH = 4  # split 2 + 2 across the ranks
SEED = 0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model() -> torch.nn.Module:
    """The tiny AVE model, identical in every process (same seed), made deterministic.

    For averaged per-rank gradients to equal the gradient of the combined batch, each sample's
    computation must not depend on anything but the weights and that sample:
    - no randomness: the head's dropout, the encoders' stochastic depth and SpecAugment masks
      would draw different masks in each process than in the single run;
    - no coupling across the batch: BatchNorm in training mode (the adapters' bn1/bn2, HTS-AT's
      bn0) normalises with the statistics of the batch it sees, i.e. of half the batch on each
      rank, and mixup mixes samples with their batch neighbours.
    Eval mode turns off all of these (BatchNorm uses its running statistics) while gradients still
    flow; ``encoders_train_mode=False`` keeps the encoders there should anything call train().
    """
    cfg = tiny_model_config()
    cfg.encoders_train_mode = False
    torch.manual_seed(SEED)
    model = create_model("ave", cfg, load_encoder_weights=False)
    return model.eval()


def _batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        "frames": torch.randn(BATCH, 10, 3, 64, 64, generator=g),
        "audio": torch.randn(BATCH, 10, 64000, generator=g) * 0.1,
        "segment_labels": torch.tensor([[0, 0, 4, 4, 1, 1, 4, 4, 4, 0]] * 2 + [[2] * 5 + [4] * 5] * 2),
        "event_label": torch.tensor([[0], [1], [2], [3]]),
    }


def _loss(net: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    out = net(frames=batch["frames"], audio=batch["audio"])
    # ave_loss is mean-reduced per rank; DDP averages the ranks' gradients, so with equal halves
    # the result is the mean over the combined batch.
    return ave_loss({k: v.float() for k, v in out.items()}, batch, AVELossConfig())[0]


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _worker(rank: int, port: int, tmp: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)  # 2 processes on 2 cores
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    net = None
    try:
        model = _model()
        # gate_tk exists in every adapter for checkpoint compatibility but never enters the graph.
        net = DistributedDataParallel(model, find_unused_parameters=True)
        batch = torch.load(Path(tmp) / "batch.pt")
        half = BATCH // WORLD
        mine = {k: v[rank * half : (rank + 1) * half] for k, v in batch.items()}
        _loss(net, mine).backward()
        if rank == 0:
            torch.save({"grads": _grads(model), "state": model.state_dict()}, Path(tmp) / "rank0.pt")
    finally:
        # DDP freed before the group, as the trainer does (a Reducer holding the group's last
        # reference deadlocks against gloo's worker threads).
        net = None
        gc.collect()
        dist.destroy_process_group()


def test_two_gloo_processes_average_to_the_combined_batch_gradient(tmp_path):
    batch = _batch()
    torch.save(batch, tmp_path / "batch.pt")
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)

    model = _model()
    _loss(model, batch).backward()
    expected = _grads(model)
    got = torch.load(tmp_path / "rank0.pt")

    # Same seed, same weights: the comparison is of gradients, not of initialisations.
    for name, value in model.state_dict().items():
        torch.testing.assert_close(got["state"][name], value, rtol=0, atol=0, msg=name)
    assert expected, "no gradients in the single-process run"
    # A parameter outside the graph may have no gradient on one side and zeros on the other.
    for name in sorted(set(expected) | set(got["grads"])):
        ref = expected.get(name)
        ddp = got["grads"].get(name)
        if ref is None or ddp is None:
            assert int(torch.count_nonzero(ref if ref is not None else ddp)) == 0, name
            continue
        torch.testing.assert_close(ddp, ref, rtol=1e-5, atol=1e-7, msg=name)
    assert any(float(g.abs().max()) > 0 for g in expected.values())


# -- ResumableSampler ------------------------------------------------------------------------------


def _shards(size: int, epoch: int, replicas: int = 2, seed: int = 7) -> list[list[int]]:
    shards = []
    for rank in range(replicas):
        s = ResumableSampler(size, seed, shuffle=True, num_replicas=replicas, rank=rank)
        s.set_epoch(epoch)
        shards.append(list(s))
    return shards


def test_replicas_partition_an_epoch_without_overlap():
    a, b = _shards(10, epoch=0)
    assert len(a) == len(b) == 5
    assert not set(a) & set(b)
    assert sorted(a + b) == list(range(10))


def test_uneven_size_pads_so_every_rank_gets_the_same_count():
    a, b = _shards(7, epoch=0)
    assert len(a) == len(b) == 4
    assert set(a) | set(b) == set(range(7))
    assert len(a + b) - len(set(a + b)) == 1  # exactly one sample repeated as padding


def test_epochs_differ_and_repeat_exactly():
    e0, e1 = _shards(32, epoch=0), _shards(32, epoch=1)
    assert e0 != e1
    assert _shards(32, epoch=1) == e1  # the order depends only on (seed, epoch)


def test_set_epoch_start_skips_exactly_start_samples():
    s = ResumableSampler(20, seed=3, shuffle=True, num_replicas=2, rank=1)
    s.set_epoch(2)
    full = list(s)
    for start in (0, 1, 4, len(full)):
        s.set_epoch(2, start)
        assert list(s) == full[start:]
        assert len(s) == len(full) - start
