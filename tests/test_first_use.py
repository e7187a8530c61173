"""First use, as a new user meets it: resume keeps its data, a typo never makes a dataset, the tiny
recipe runs on a cache of the real annotation files, messages say what is wrong, options work in
both places, the CLI starts without torch, piped output is plain."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DATA, REPO, invoke, ok, tiny_model_config

from dgsct_cli.recipe_files import recipe_files


def one_line_error(result) -> str:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


@pytest.fixture(scope="module")
def cache(ave_cache) -> Path:
    return ave_cache


# -- 1. --resume continues on the run's own data ---------------------------------------------------


@pytest.mark.slow
def test_resume_uses_the_runs_data_and_refuses_other_data(cache, tmp_path):
    run = tmp_path / "run"
    tiny = ["data.num_workers=0", "train.batch_size=2"]
    ok("--quiet", "train", "--recipe", "ave-tiny", "--data", cache, "--output", run, "train.epochs=1", *tiny)
    record = json.loads((run / "run.json").read_text())
    assert record["data"] == str(cache.resolve()) and record["overrides"] == ["train.epochs=1", *tiny]
    # No --data: the run's own cache, not the recipe's default data/ave-tiny.
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        ok("--quiet", "train", "--output", run, "--resume", "train.epochs=2")
    finally:
        os.chdir(cwd)
    assert not (tmp_path / "data").exists()
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2]
    assert lines[0]["val"]["num_samples"] == lines[1]["val"]["num_samples"]
    assert json.loads((run / "run.json").read_text())["resume_overrides"] == ["train.epochs=2"]
    other = tmp_path / "other"
    other.mkdir()
    message = one_line_error(invoke("train", "--output", run, "--resume", "--data", other))
    assert str(cache) in message and "--switch-data" in message


def test_a_mistyped_data_folder_is_an_error_and_creates_nothing(tmp_path):
    typo = tmp_path / "dta" / "ave-tiny"
    message = one_line_error(
        invoke("train", "--recipe", "ave-tiny", "--data", typo, "--output", tmp_path / "r")
    )
    assert str(typo) in message and "does not exist" in message
    assert not typo.exists() and not (tmp_path / "dta").exists()


# -- the tiny recipe on a cache of the real annotation files ---------------------------------------


def _real_format_ave_root(root: Path, per_split: dict[str, int]) -> Path:
    """The real AVE annotation files with synthetic videos for a few of their lines."""
    from dgsct_cli.data.ave import read_ave_annotations
    from dgsct_cli.data.synthetic import _render_audio, _render_frames
    from dgsct_cli.data.video import write_mp4

    root.mkdir(parents=True)
    for name in ("Annotations.txt", "trainSet.txt", "valSet.txt", "testSet.txt", "categories.txt"):
        (root / name).write_bytes((DATA / "ave" / name).read_bytes())
    classes, splits = read_ave_annotations(root)
    rng = np.random.default_rng(0)
    (root / "AVE").mkdir()
    for split, count in per_split.items():
        for row in splits[split][:count]:
            k = classes.index(row.category)
            seg = [k if row.start <= t < row.end else -1 for t in range(10)]
            frames = _render_frames(seg, len(classes), 32, 2, rng)
            write_mp4(root / "AVE" / f"{row.video_id}.mp4", frames, 2, _render_audio(seg, 32000, rng), 32000)
    return root


@pytest.mark.slow
def test_the_tiny_recipe_trains_on_a_cache_of_the_real_annotation_files(tmp_path):
    root = _real_format_ave_root(tmp_path / "AVE_Dataset", {"train": 4, "val": 2, "test": 2})
    data, run = tmp_path / "C", tmp_path / "run"
    ok("--quiet", "prepare", "ave", "--root", root, "--out", data, "--image-size", 64, "--workers", 1)
    manifest = json.loads((data / "manifest.json").read_text())
    assert len(manifest["class_names"]) == 28
    ok("--quiet", "train", "--recipe", "ave-tiny", "--data", data, "--output", run, "train.epochs=1")
    from dgsct_cli.config import load_recipe

    assert load_recipe(str(run / "recipe.yaml")).model.head.num_classes == 28  # from the data
    result = ok("eval", "--checkpoint", run, "--data", data, "--split", "test")
    assert "AVE test: 2 samples" in result.stdout
    # A recipe that pins another class count still refuses the data, naming both counts.
    pinned = invoke(
        "train",
        "--recipe",
        "ave-tiny",
        "--data",
        data,
        "--output",
        tmp_path / "r2",
        "model.head.num_classes=4",
    )
    message = one_line_error(pinned)
    assert "num_classes is 4" in message and "28 classes" in message


# -- 4. messages that say what is wrong -----------------------------------------------------------


def test_a_checkpoint_of_another_task_on_this_data_says_so(cache, tmp_path):
    from dgsct_cli.checkpoint import save_checkpoint
    from dgsct_cli.config import Recipe
    from dgsct_cli.factory import create_model

    cfg = tiny_model_config("avvp")
    model = create_model("avvp", cfg)
    path = tmp_path / "avvp.safetensors"
    save_checkpoint(model, Recipe(task="avvp", model=model.cfg), path)
    message = one_line_error(invoke("eval", "--checkpoint", path, "--data", cache))
    assert "this is AVE data" in message and "for task AVVP" in message


class Gadget:  # a pickled object that is not a tensor
    pass


def test_files_that_are_not_safe_checkpoints_are_named_without_unsafe_advice(cache, tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    pickled = tmp_path / "object.pt"
    torch.save({"model": Gadget()}, pickled)
    for path in (garbage, pickled):
        message = one_line_error(invoke("eval", "--checkpoint", path, "--data", cache))
        assert str(path) in message and "not a checkpoint we can read safely" in message
        assert "weights_only" not in message and "trust" not in message


def test_a_mistyped_recipe_name_suggests_the_close_one():
    message = one_line_error(invoke("train", "--recipe", "ave-tinyy"))
    assert "did you mean 'ave-tiny'?" in message


# -- 5. --quiet and --verbose in both places; flags read as flags ----------------------------------


def test_quiet_and_verbose_work_after_the_subcommand_and_show_in_its_help():
    result = ok("info", "--recipe", "ave-tiny", "--quiet")
    assert "parameters" in result.stdout
    ok("recipes", "list", "--verbose")
    for command in (["train"], ["eval"], ["prepare", "ave"], ["visualize", "tsne"], ["bench"]):
        text = ok(*command, "--help").stdout
        assert "--quiet" in text and "--verbose" in text, command
        assert "<bool>" not in text, command
    assert "--resume " in ok("train", "--help").stdout


# -- 6. each recipe listed once ------------------------------------------------------------------


def test_recipes_list_shows_each_recipe_once_from_the_repository_root():
    result = subprocess.run(
        [sys.executable, "-m", "dgsct_cli", "recipes", "list"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    rows = [line.split()[1] for line in result.stdout.splitlines() if line.strip().startswith("│")]
    assert rows and len(rows) == len(set(rows)), result.stdout


# -- 7. the CLI answers --help and argument errors without importing torch -------------------------

NO_TORCH = """
import sys
from dgsct_cli.cli.app import app
for args in {args!r}:
    try:
        app(args, prog_name="dgsct")
    except SystemExit:
        pass
assert "torch" not in sys.modules, "torch was imported"
print("ok")
"""


def test_help_and_argument_errors_do_not_import_torch():
    args = [["--help"], ["train", "--help"], ["prepare", "--help"], ["eval", "--help"], ["train", "--bogus"]]
    # Every prepare command's --help and the recipe list come from light modules too.
    args += [["prepare", name, "--help"] for name in ("ave", "avvp", "avs", "avqa", "vggsound40k")]
    args += [["recipes", "list"]]
    # Every recipe resolves and is checked without torch too, once the timm catalogue is in the
    # cache (the first run of a timm version reads it from timm: models/encoders/timm_catalog.py).
    args += [["recipes", "show", path.stem] for path in recipe_files()]
    args += [["recipes", "show", "ave-tiny", "model.visual.name=resnet50"], ["recipes", "show", "nope"]]
    warm = subprocess.run(
        [
            sys.executable,
            "-c",
            "from dgsct_cli.models.encoders.timm_catalog import timm_catalog; timm_catalog()",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert warm.returncode == 0, warm.stderr
    result = subprocess.run(
        [sys.executable, "-c", NO_TORCH.format(args=args)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stdout + result.stderr


# -- 9. piped output is plain, at full width -------------------------------------------------------


def test_piped_output_is_not_wrapped_at_80_columns(tmp_path):
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    long_name = "a-recipe-with-a-rather-long-name-to-show-that-piped-tables-keep-each-row-on-one-line"
    (recipes / f"{long_name}.yaml").write_text("task: ave\n")
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "FORCE_COLOR", "TTY_COMPATIBLE")}
    result = subprocess.run(
        [sys.executable, "-m", "dgsct_cli", "recipes", "list"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    row = next(line for line in result.stdout.splitlines() if long_name in line)
    assert str(recipes / f"{long_name}.yaml") in row or f"recipes/{long_name}.yaml" in row
    assert len(row) > 80


# -- 9.5 a non-editable install finds its built-in recipes ------------------------------------------


@pytest.mark.slow
def test_a_non_editable_install_trains_the_tiny_recipe_from_an_empty_folder(tmp_path):
    wheels, site, empty = tmp_path / "wheels", tmp_path / "site", tmp_path / "empty"
    empty.mkdir()
    # Built from a copy: setuptools writes build/ and *.egg-info/ next to the sources it builds.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "dgsct_cli", source / "dgsct_cli", ignore=shutil.ignore_patterns("__pycache__"))
    run = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(source)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    (wheel,) = wheels.glob("dgsct-*.whl")
    run = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run(
        [sys.executable, "-c", "import dgsct_cli; print(dgsct_cli.__file__)"],
        cwd=empty,
        env=env,
        capture_output=True,
        text=True,
    )
    assert where.stdout.startswith(str(site)), where.stdout + where.stderr
    train = subprocess.run(
        [sys.executable, "-m", "dgsct_cli", "--quiet", "train", "--recipe", "ave-tiny.yaml", "train.epochs=1",
         "data.synthetic_videos=6"],
        cwd=empty, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert train.returncode == 0, train.stderr[-3000:]
    assert "done: 1 epoch," in train.stdout
    assert (empty / "runs" / "ave-tiny" / "best.safetensors").is_file()
