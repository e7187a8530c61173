"""How many threads and loader workers a run uses (runtime.plan_threads): tiny models on one
intra-op thread, full-size ones on every usable core, ``runtime.threads`` over both, and never more
DataLoader workers than usable cores."""

from __future__ import annotations

import warnings

import pytest
import torch

from dgsct_cli.config import RecipeError, load_recipe
from dgsct_cli.data.datasets import make_loader
from dgsct_cli.runtime import SMALL_MODEL_PARAMS, plan_threads, usable_cores

TINY = ("ave-tiny", "avvp-tiny", "avqa-grounding-tiny", "avqa-tiny", "avs-s4-tiny", "avs-ms3-tiny")


def test_the_thread_rule():
    # Size alone: a tiny model gets one thread, a full-size one every usable core.
    assert plan_threads(cores=2, num_params=1_500_000).intra_op == 1
    assert plan_threads(cores=16, num_params=SMALL_MODEL_PARAMS - 1).intra_op == 1
    assert plan_threads(cores=2, num_params=SMALL_MODEL_PARAMS).intra_op == 2
    assert plan_threads(cores=16, num_params=420_000_000).intra_op == 16
    # runtime.threads (or OMP_NUM_THREADS) wins both ways.
    assert plan_threads(cores=16, num_params=1_000, threads=4).intra_op == 4
    assert plan_threads(cores=2, num_params=420_000_000, threads=1).intra_op == 1
    # Loader workers: as asked, at most one per usable core.
    assert plan_threads(cores=2, num_workers=4).loader_workers == 2
    assert plan_threads(cores=16, num_workers=4).loader_workers == 4
    assert plan_threads(cores=2, num_workers=0).loader_workers == 0


@pytest.fixture
def restore_threads(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("name", TINY)
def test_tiny_recipes_build_one_thread_models(name, restore_threads):
    from dgsct_cli.factory import build_model

    torch.set_num_threads(2)
    model = build_model(load_recipe(name), load_encoder_weights=False)
    assert sum(p.numel() for p in model.parameters()) < SMALL_MODEL_PARAMS
    assert torch.get_num_threads() == 1


def test_runtime_threads_overrides_the_size_rule(restore_threads, monkeypatch):
    from dgsct_cli.factory import build_model

    build_model(load_recipe("ave-tiny", ["runtime.threads=2"]), load_encoder_weights=False)
    assert torch.get_num_threads() == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the usual variable counts as an override too
    build_model(load_recipe("ave-tiny"), load_encoder_weights=False)
    assert torch.get_num_threads() == 2
    with pytest.raises(RecipeError, match=r"runtime\.threads"):
        load_recipe("ave-tiny", ["runtime.threads=0"])


def test_loader_never_has_more_workers_than_cores():
    data = torch.utils.data.TensorDataset(torch.arange(8.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's "will create N worker processes" warning
        loader = make_loader(data, 2, usable_cores() + 3, torch.device("cpu"))
        assert loader.num_workers == usable_cores()
        assert sum(len(b[0]) for b in loader) == 8
