"""Shared test helpers: where the fixtures are, tiny models, release-layout state dicts."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "release"
DATA = REPO / "tests" / "fixtures" / "data"  # real annotation files (no media)
# Values of the regenerated inputs that references were made from (tests/fixtures/release/excerpts.py).
EXCERPTS: dict[str, torch.Tensor] = torch.load(FIXTURES / "excerpts.pt", weights_only=True)

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two workers on two cores: one intra-op thread each, or they oversubscribe and spin
    # (OMP_NUM_THREADS also holds the models that dgsct builds to it: runtime.apply_threads).
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"


@pytest.fixture(scope="session", autouse=True)
def _cache_in_the_test_folder(tmp_path_factory):
    """dgsct's user cache (models/encoders/timm_catalog.py) in the session's temporary folder,
    which goes when the session passes, not in the user's ~/.cache (subprocesses inherit it)."""
    before = os.environ.get("DGSCT_CACHE_DIR")
    os.environ["DGSCT_CACHE_DIR"] = str(tmp_path_factory.mktemp("dgsct-cache"))
    yield
    if before is None:
        os.environ.pop("DGSCT_CACHE_DIR", None)
    else:
        os.environ["DGSCT_CACHE_DIR"] = before


# With `--dist loadfile --no-loadscope-reorder` (pyproject addopts) each file runs whole on one of
# the two workers, in the order collected. The longest files (measured with `pytest --durations`)
# go first, each to the worker that is free, so the two finish together instead of one running a
# long file alone at the end. Order only: every test still runs. Update it when a file's time changes.
LONGEST_FILES_FIRST = (
    "test_step_speed.py",
    "test_cli_avvp.py",
    "test_reliability_2.py",
    "test_lavish_tasks.py",
    "test_predict.py",
    "test_compare.py",
    "test_install.py",
    "test_avqa_cli.py",
    "test_cli_ave.py",
    "test_reliability.py",
    "test_fewshot_cli.py",
    "test_fewshot_zeroshot.py",
    "test_loggers.py",
    "test_avs_cli.py",
    "test_fewshot_tiny.py",
    "test_train_resume.py",
    "test_lavish.py",  # the full-size reference files apart, not to load two at once
    "test_torchrun.py",
    "test_avs_release.py",
    "test_bench.py",
    "test_avvp_release.py",
    "test_first_use.py",
    "test_avqa_release.py",
    "test_eval_predictions.py",
    "test_fewshot.py",
    "test_data_avvp.py",
    "test_release_checkpoint.py",
    "test_runs_share.py",
    "test_release_ave_avvp.py",
    "test_training_features.py",
    "test_ddp.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file keeps its order


@pytest.fixture(autouse=True)
def _quiet_random_init_warnings():
    logging.getLogger("dgsct_cli.models.encoders").setLevel(logging.ERROR)
    yield


def release_state_dict_from_shapes(shapes_file: Path, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors with exactly the release's keys and shapes (sane BatchNorm statistics)."""
    shapes = json.loads(shapes_file.read_text())
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked") or key.endswith("relative_position_index"):
            state[key] = torch.zeros(shape, dtype=torch.long)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=g) + 0.5
        else:
            state[key] = torch.randn(shape, generator=g) * 0.02
    return state


def excerpt(tensor: torch.Tensor, count: int = 64) -> torch.Tensor:
    """``count`` values spread evenly over ``tensor`` (the rule of tests/fixtures/release/excerpts.py)."""
    flat = tensor.detach().flatten()
    return flat[:: max(1, flat.numel() // count)][:count]


def assert_regenerated(values: torch.Tensor, stored: torch.Tensor, atol: float = 1e-5) -> None:
    """A seeded input regenerated here is the one a reference was made from, up to float drift.

    ``torch.randn`` fills float tensors through a vectorised path on AVX2/AVX-512 and a scalar one
    elsewhere (aarch64, ``ATEN_CPU_CAPABILITY=default``); their values differ by up to 2.2e-6, so a
    regenerated input is compared with stored values of it (``excerpt``), never hashed
    (tests/fixtures/README.md, "Portability")."""
    torch.testing.assert_close(values.flatten(), stored.flatten().to(values.dtype), rtol=0.0, atol=atol)


# ImageNet statistics: the swinv2-htsat family's frame normalisation (datasets take them as arguments).
IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


def tiny_model_config(task: str = "ave"):
    """The model section of the task's tiny recipe (typed), with 28 AVE classes."""
    from dgsct_cli.config import load_recipe

    cfg = load_recipe(f"{task}-tiny").model
    if task == "ave":
        cfg.head.num_classes = 28
    return cfg


def synthetic_cache(task: str, out: Path, videos: int = 8, image_size: int = 64) -> Path:
    """A prepared synthetic dataset of ``task`` at ``out`` (the task's own writer)."""
    from dgsct_cli.tasks.base import get_task

    get_task(task).write_synthetic(
        Path(out), videos=videos, image_size=image_size, progress=False, console=None
    )
    return Path(out)


# -- data and files many modules read, written once per xdist worker ------------------------------
# Session fixtures live here: one imported into several test modules would be set up once per module.
# Training, evaluating and resuming never write into a cache or these files; a test that damages or
# replaces one works on its own copy.


def _listing(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def _shared(folder: Path) -> Iterator[Path]:
    """Yield ``folder``; at the session's end, an error if a test changed anything in it."""
    before = _listing(folder)
    yield folder
    assert _listing(folder) == before, f"a test wrote into the shared {folder}: work on a copy of it"


@pytest.fixture(scope="session")
def ave_cache(tmp_path_factory) -> Iterator[Path]:
    """The synthetic AVE cache of the training and resume tests (8 videos at 64 px)."""
    yield from _shared(
        synthetic_cache("ave", tmp_path_factory.mktemp("ave-cache") / "C", videos=8, image_size=64)
    )


@pytest.fixture(scope="session")
def fewshot_files(tmp_path_factory) -> Iterator[dict[str, Path]]:
    """Tiny CLIP / CLAP / RoBERTa files in the published layouts (tests/test_fewshot_files.py)."""
    from test_fewshot_files import write_tiny_files

    folder = tmp_path_factory.mktemp("fewshot-weights")
    files = write_tiny_files(folder)
    for _ in _shared(folder):
        yield files


@pytest.fixture(scope="session")
def fewshot_ave(tmp_path_factory) -> Iterator[Path]:
    """A synthetic AVE cache (24 videos, 4 classes) at the tiny CLIP's 32 px."""
    yield from _shared(
        synthetic_cache("fewshot-ave", tmp_path_factory.mktemp("fewshot-ave"), videos=24, image_size=32)
    )


@pytest.fixture(scope="session")
def fewshot_llp(tmp_path_factory) -> Iterator[Path]:
    yield from _shared(
        synthetic_cache("fewshot-llp-cls", tmp_path_factory.mktemp("fewshot-llp"), videos=12, image_size=32)
    )


@pytest.fixture
def tiny_model():
    from dgsct_cli.factory import create_model

    def make(task: str = "ave", seed: int = 0, **overrides):
        torch.manual_seed(seed)
        cfg = tiny_model_config(task)
        for k, v in overrides.items():
            setattr(cfg, k, v)
        return create_model(task, cfg)

    return make


def tiny_inputs(batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 10, 3, 64, 64, generator=g), torch.randn(batch, 10, 64000, generator=g) * 0.1


# -- the CLI, as the tests call it ---------------------------------------------------------------


def invoke(*args):
    from typer.testing import CliRunner

    from dgsct_cli.cli.app import app

    return CliRunner().invoke(app, [str(a) for a in args])


def ok(*args):
    result = invoke(*args)
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    return result


def assert_one_line_error(result, *fragments: str) -> str:
    """Exit code 1, no traceback, one ``error: ...`` line holding every fragment; returns it."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]
