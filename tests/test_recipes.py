"""Recipes: YAML -> typed configs, lookup by name, ``key.path=value`` overrides, clear errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from typer.testing import CliRunner

from dgsct_cli.config import (
    DataConfig,
    Recipe,
    RecipeError,
    SchedulerConfig,
    TrainConfig,
    builtin_recipe_dir,
    find_recipe,
    load_recipe,
    recipe_to_yaml,
    to_dict,
)
from dgsct_cli.models.dgsct import ModelConfig

AVE_YAML = REPO / "recipes" / "ave.yaml"
TINY_YAML = REPO / "recipes" / "ave-tiny.yaml"


# -- loading the shipped recipes ------------------------------------------------------------------


def test_ave_recipe_loads_into_typed_configs_with_release_values():
    r = load_recipe(str(AVE_YAML))
    assert isinstance(r, Recipe) and r.task == "ave" and r.name == "ave"
    assert isinstance(r.model, ModelConfig) and isinstance(r.data, DataConfig)
    assert isinstance(r.train, TrainConfig) and isinstance(r.train.scheduler, SchedulerConfig)
    t = r.train
    # "5.0e-4" is a string to YAML 1.1; the typed config must hold the float.
    assert isinstance(t.lr, float) and t.lr == pytest.approx(5e-4)
    assert (t.scheduler.type, t.scheduler.step_size) == ("step", 3)
    assert isinstance(t.scheduler.gamma, float) and t.scheduler.gamma == pytest.approx(0.35)
    assert (t.batch_size, t.grad_accum, t.epochs, t.seed) == (8, 2, 50, 43)
    assert t.precision == "auto"
    m = r.model
    assert m.visual.name == "swinv2_large_window12_192.ms_in22k" and m.visual.img_size == 192
    assert m.visual.weights is None and m.audio.weights is None
    assert m.audio.depths == [2, 2, 6, 2] and m.audio.num_heads == [4, 8, 16, 32]
    assert isinstance(m.audio.fmin, float) and m.audio.fmin == 50.0
    assert m.adapter.num_tokens == 32 and m.adapter.alpha == pytest.approx(0.3)
    # The class count comes from the prepared data (not pinned); the rest is typed by the task.
    assert (m.head.num_classes, m.head.top_k, m.head.av_score_weight) == (None, 4, 0.3)
    assert m.num_segments == 10 and m.encoders_train_mode is True and m.recompute == "auto"
    assert r.data.segment_tiling == 10 and r.data.path == "data/ave" and r.data.num_workers == 4
    assert r.loss.gate_loss == "release"
    assert (t.accumulation, t.early_stop) == ("release", 20)


def test_tiny_recipe_loads_with_small_widths():
    r = load_recipe(str(TINY_YAML))
    assert r.task == "ave" and r.name == "ave-tiny"
    assert r.model.visual.img_size == 64
    assert r.model.visual.args["embed_dim"] == 32 and r.model.visual.args["depths"] == [1, 1, 3, 1]
    assert r.model.audio.mel_bins == 16 and r.model.audio.depths == [1, 1, 1, 1]
    assert r.model.adapter.num_tokens == 8
    assert r.model.head.num_classes is None and r.model.head.temporal.d_model == 32
    assert r.data.synthetic_if_missing is True and r.data.segment_tiling == 2
    assert r.data.num_workers == 0
    t = r.train
    assert (t.epochs, t.batch_size, t.grad_accum, t.seed, t.eval_batch_size) == (8, 4, 1, 43, 8)
    assert t.lr == pytest.approx(1e-3)
    assert (t.scheduler.type, t.scheduler.step_size, t.scheduler.gamma) == ("step", 4, 0.5)
    # Unset sections take the defaults (the AVE release's loss).
    assert to_dict(r.loss) == {"gate_loss": "release"}


def test_recipe_lookup_by_name_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert find_recipe("ave").resolve() == AVE_YAML.resolve()
    assert find_recipe("ave-tiny").resolve() == TINY_YAML.resolve()
    by_name, by_path = load_recipe("ave"), load_recipe(str(AVE_YAML))
    assert by_name.name == by_path.name == "ave"
    same = lambda r: {k: v for k, v in to_dict(r).items() if k != "source"}  # noqa: E731
    assert same(by_name) == same(by_path)
    assert Path(by_name.source).resolve() == AVE_YAML.resolve()


def test_local_recipes_folder_is_searched_first(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "mine.yaml").write_text(TINY_YAML.read_text().replace("epochs: 8", "epochs: 3"))
    r = load_recipe("mine")
    assert r.name == "mine" and r.train.epochs == 3
    # An explicit path to a file with any name works too.
    other = tmp_path / "elsewhere.yml"
    other.write_text("task: ave\ntrain: {epochs: 2}\n")
    assert load_recipe(str(other)).train.epochs == 2


# -- overrides ------------------------------------------------------------------------------------


def test_overrides_numbers_lists_nested_booleans_and_null():
    r = load_recipe(
        "ave-tiny",
        [
            "train.epochs=3",
            "train.lr=2e-4",  # a string to YAML 1.1, coerced to float
            "train.scheduler.gamma=0.5",
            "train.scheduler.step_size=2",
            "train.mixup_alpha=1",  # an int where a float is expected
            "model.audio.depths=[2, 2, 2, 2]",
            "model.visual.args.embed_dim=48",  # into a free-form mapping
            "model.head.temporal.d_model=16",  # nested, validated by the task's head config
            "model.encoders_train_mode=false",
            "train.compile=true",
            "data.synthetic_if_missing=False",
            "train.max_steps_per_epoch=5",
            "train.mixup=null",
            "loss.gate_loss=bce",
            "name=custom",
        ],
    )
    t = r.train
    assert t.epochs == 3 and isinstance(t.epochs, int)
    assert isinstance(t.lr, float) and t.lr == pytest.approx(2e-4)
    assert t.scheduler.gamma == 0.5 and t.scheduler.step_size == 2 and t.scheduler.type == "step"
    assert isinstance(t.mixup_alpha, float) and t.mixup_alpha == 1.0
    assert r.model.audio.depths == [2, 2, 2, 2]
    # Siblings of an overridden nested key keep their recipe values.
    assert r.model.visual.args == {
        "embed_dim": 48,
        "depths": [1, 1, 3, 1],
        "num_heads": [2, 4, 8, 16],
        "window_size": 4,
    }
    temporal = to_dict(r.model.head.temporal)
    assert {k: temporal[k] for k in ("visual_proj", "audio_proj", "d_model", "feedforward")} == {
        "visual_proj": 64,
        "audio_proj": 32,
        "d_model": 16,
        "feedforward": 64,
    }
    assert r.model.head.num_classes is None
    assert r.model.encoders_train_mode is False and t.compile is True
    assert r.data.synthetic_if_missing is False
    assert t.max_steps_per_epoch == 5 and t.mixup is None
    assert r.loss.gate_loss == "bce"
    assert r.name == "custom"
    # Overrides never leak into the recipe file or later loads.
    assert load_recipe("ave-tiny").train.epochs == 8


def test_override_value_keeps_equals_signs_and_later_overrides_win():
    r = load_recipe("ave-tiny", ["data.path=/data/a=b", "train.epochs=2", "train.epochs=5"])
    assert r.data.path == "/data/a=b" and r.train.epochs == 5


# -- errors ---------------------------------------------------------------------------------------


def _error(name: str, overrides: list[str]) -> str:
    with pytest.raises(RecipeError) as info:
        load_recipe(name, overrides)
    assert isinstance(info.value, ValueError)  # the CLI turns ValueErrors into one-line errors
    return str(info.value)


@pytest.mark.parametrize(
    "override, key, suggestion",
    [
        ("train.lrr=1", "train.lrr", "train.lr"),
        ("train.epoch=3", "train.epoch", "train.epochs"),
        ("train.scheduler.gama=0.1", "train.scheduler.gama", "train.scheduler.gamma"),
        ("data.num_worker=1", "data.num_worker", "data.num_workers"),
        ("model.adapter.num_token=4", "model.adapter.num_token", "model.adapter.num_tokens"),
        ("trian.epochs=3", "trian", "train"),
    ],
)
def test_unknown_key_names_file_full_path_and_closest_key(override, key, suggestion):
    msg = _error("ave", [override])
    assert msg.startswith(f"{find_recipe('ave')} (with overrides {override})")
    assert f"unknown key '{key}'" in msg
    assert f"did you mean '{suggestion}'?" in msg


def test_unknown_key_in_the_recipe_file_itself(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: ave\ntrain:\n  epochs: 2\n  batchsize: 4\n")
    msg = _error(str(bad), [])
    assert str(bad) in msg and "unknown key 'train.batchsize'" in msg
    assert "did you mean 'train.batch_size'?" in msg
    assert "with overrides" not in msg


def test_unknown_key_without_close_match_lists_valid_keys():
    msg = _error("ave", ["train.zzzzzz=1"])
    assert "unknown key 'train.zzzzzz'" in msg and "did you mean" not in msg
    assert re.search(r"valid keys here: .*\bepochs\b.*\blr\b", msg)


@pytest.mark.parametrize(
    "override, key, suggestion",
    [
        ("model.head.num_clases=4", "model.head.num_clases", "model.head.num_classes"),
        ("model.head.temporal.dmodel=8", "model.head.temporal.dmodel", "model.head.temporal.d_model"),
        ("loss.gate_los=bce", "loss.gate_los", "loss.gate_loss"),
    ],
)
def test_head_and_loss_keys_are_validated_against_the_task(override, key, suggestion):
    msg = _error("ave", [override])
    assert msg.startswith(f"{find_recipe('ave')} (with overrides {override})")
    assert f"unknown key '{key}'" in msg and f"did you mean '{suggestion}'?" in msg


@pytest.mark.parametrize(
    "override, expected",
    [
        ("train.epochs=abc", r"train\.epochs: expected an integer, got 'abc'"),
        ("train.epochs=1.5", r"train\.epochs: expected an integer, got 1\.5"),
        ("train.lr=fast", r"train\.lr: expected a number, got 'fast'"),
        ("train.compile=maybe", r"train\.compile: expected true/false, got 'maybe'"),
        ("model.audio.depths=[1, x, 1, 1]", r"model\.audio\.depths\[1\]: expected an integer, got 'x'"),
        ("model.audio.depths=3", r"model\.audio\.depths: expected a list, got 3"),
        ("train.scheduler=3", r"train\.scheduler: expected a mapping, got 3"),
        ("model.head.num_classes=many", r"model\.head\.num_classes: expected an integer, got 'many'"),
        (
            "train.scheduler.type=exp",
            r"train\.scheduler\.type: 'exp' is out of range \(allowed: one of 'step', 'multistep', 'cosine', 'none'\)",
        ),
        ("train.epochs=0", r"train\.epochs: 0 is out of range \(allowed: >= 1\)"),
        (
            "loss.gate_loss=focal",
            r"loss\.gate_loss: 'focal' is out of range \(allowed: one of 'release', 'bce'\)",
        ),
        ("task=nope", r"task: unknown task 'nope'"),
    ],
)
def test_wrong_types_and_values_are_refused(override, expected):
    msg = _error("ave", [override])
    assert msg.startswith(f"{find_recipe('ave')} (with overrides {override})")
    assert re.search(expected, msg), msg


@pytest.mark.parametrize(
    "override, expected",
    [
        ("train.epochs", "expected key.path=value"),
        ("train.epochs 5", "expected key.path=value"),
        ("=5", "empty key"),
        ("train.epochs.x=5", "'epochs' is not a section"),
    ],
)
def test_malformed_overrides(override, expected):
    msg = _error("ave", [override])
    assert repr(override) in msg and expected in msg


def test_recipe_not_found_lists_known_recipes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        RecipeError, match=r"avee: recipe not found \(did you mean 'ave'\?\); known recipes: "
    ) as info:
        load_recipe("avee")
    known = str(info.value).split("known recipes: ", 1)[1].split(", ")
    assert {"ave", "ave-tiny"} <= set(known)
    assert known == sorted(known)


def test_recipe_not_found_lists_the_local_recipes_it_would_find(tmp_path, monkeypatch):
    """``find_recipe`` looks in ./recipes first, so its not-found message must list those too."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "mine.yaml").write_text("task: ave\n")
    assert load_recipe("mine").name == "mine"
    with pytest.raises(RecipeError) as info:
        load_recipe("mien")
    known = str(info.value).split("known recipes: ", 1)[1].split(", ")
    assert "mine" in known and "ave" in known


def test_invalid_yaml_and_non_mapping_files(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("task: ave\ntrain: {epochs: 2\n")
    assert re.search(rf"{re.escape(str(broken))}: not valid YAML", _error(str(broken), []))
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    assert f"{listing}: expected a mapping at the top level" in _error(str(listing), [])


# -- resolved recipes round-trip ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ave", "ave-tiny"])
def test_recipe_to_yaml_loads_back_to_the_same_recipe(name, tmp_path):
    r = load_recipe(name)
    path = tmp_path / "resolved.yaml"
    path.write_text(recipe_to_yaml(r))
    back = load_recipe(str(path))
    assert back.name == r.name
    back.source = r.source  # where it was read from is informational
    assert back == r


def test_cli_recipes_show_prints_resolved_yaml_that_loads_back(tmp_path):
    from dgsct_cli.cli.app import app

    runner = CliRunner()
    result = runner.invoke(app, ["recipes", "show", "ave"])
    assert result.exit_code == 0, result.output
    raw = yaml.safe_load(result.stdout)
    # Defaults are filled in: keys the YAML file leaves out are present.
    assert raw["train"]["weight_decay"] == 0.0 and raw["train"]["eval_batch_size"] == 8
    assert raw["model"]["adapter"]["gate_tk"] is True
    assert raw["train"]["lr"] == pytest.approx(5e-4) and raw["train"]["scheduler"]["gamma"] == 0.35
    path = tmp_path / "shown.yaml"
    path.write_text(result.stdout)
    back, original = load_recipe(str(path)), load_recipe("ave")
    back.source = original.source
    assert back == original

    result = runner.invoke(app, ["recipes", "show", "ave-tiny", "train.epochs=3", "train.lr=0.01"])
    assert result.exit_code == 0, result.output
    raw = yaml.safe_load(result.stdout)
    assert raw["train"]["epochs"] == 3 and raw["train"]["lr"] == 0.01 and raw["name"] == "ave-tiny"


def test_cli_recipes_show_and_list_errors_and_listing():
    from dgsct_cli.cli.app import app

    runner = CliRunner()
    result = runner.invoke(app, ["recipes", "show", "ave", "train.lrr=1"])
    assert result.exit_code == 1
    assert "did you mean 'train.lr'?" in result.stderr and "Traceback" not in result.output
    result = runner.invoke(app, ["recipes", "show", "nope"])
    assert result.exit_code == 1 and "recipe not found" in result.stderr

    result = runner.invoke(app, ["recipes", "list"])
    assert result.exit_code == 0, result.output
    for path in builtin_recipe_dir().glob("*.yaml"):
        assert path.stem in result.stdout
