"""Recipes are resolved from torch-free config modules (``models/model_config.py``,
``models/adapter_settings.py``, ``models/encoders/configs.py``, ``models/heads/configs.py``,
``tasks/configs.py``) and the timm catalogue cached per timm version: their tables agree with the
registries, and the catalogue with timm."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO, assert_one_line_error, invoke

from dgsct_cli.config import load_recipe
from dgsct_cli.models.encoders import timm_catalog as catalog_module
from dgsct_cli.recipe_files import recipe_files

# The built-in tables as the modules define them, then each task and family as its own module
# registers it (registering overwrites the table's entry).
TABLES_MATCH_REGISTRIES = """
import dgsct_cli.models.encoders.configs as fc
import dgsct_cli.tasks.configs as tc
families, tasks = dict(fc.FAMILY_CONFIGS), dict(tc.TASK_CONFIGS)
from dgsct_cli.models.encoders.base import get_family
from dgsct_cli.tasks.base import BUILTIN_TASKS, get_task
for name, entry in families.items():
    f = get_family(name)
    assert entry == fc.FamilyConfigs(f.visual_config, f.audio_config, f.text_config), name
for name in BUILTIN_TASKS:
    t = get_task(name)
    assert tasks[name] == tc.TaskConfigs(t.head_config, t.loss_config), name
assert set(tasks) == set(BUILTIN_TASKS)
print("ok")
"""


def test_builtin_config_tables_match_what_the_tasks_and_families_register():
    result = subprocess.run(
        [sys.executable, "-c", TABLES_MATCH_REGISTRIES], capture_output=True, text=True, timeout=300, cwd=REPO
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stdout + result.stderr


def test_constants_spelled_out_in_config_modules_are_the_libraries():
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    from dgsct_cli.data.avqa import NEGATIVE_RULES
    from dgsct_cli.models.encoders.configs import IMAGENET_MEAN, IMAGENET_STD
    from dgsct_cli.tasks.configs import AVQA_NEGATIVE_RULES

    assert IMAGENET_MEAN == tuple(IMAGENET_DEFAULT_MEAN) and IMAGENET_STD == tuple(IMAGENET_DEFAULT_STD)
    assert AVQA_NEGATIVE_RULES == NEGATIVE_RULES


def test_every_builtin_recipe_resolves_to_the_same_types_as_before():
    # The types a recipe's sections resolve to are the ones the model and task modules build from.
    from dgsct_cli.models.encoders.base import get_family
    from dgsct_cli.tasks.base import get_task

    for path in recipe_files():
        r = load_recipe(str(path))
        family, task = get_family(r.model.family), get_task(r.task)
        assert type(r.model.visual) is family.visual_config, path
        assert type(r.model.audio) is family.audio_config, path
        assert type(r.model.head) is task.head_config and type(r.loss) is task.loss_config, path


# -- the timm catalogue ------------------------------------------------------------------------


@pytest.fixture
def fresh_catalog(tmp_path, monkeypatch):
    """The catalogue function with an empty cache folder of its own."""
    monkeypatch.setenv("DGSCT_CACHE_DIR", str(tmp_path / "cache"))
    catalog_module.timm_catalog.cache_clear()
    yield tmp_path / "cache"
    catalog_module.timm_catalog.cache_clear()


def test_timm_catalog_is_what_timm_says_and_is_kept_per_timm_version(fresh_catalog):
    import inspect

    import timm
    from timm.models.swin_transformer_v2 import SwinTransformerV2

    catalog = catalog_module.timm_catalog()
    assert catalog.timm_version == timm.__version__
    assert set(timm.list_models("swinv2_*")) - set(catalog.swin_v2) == {
        m for m in timm.list_models("swinv2_*") if "_cr_" in m
    }
    assert catalog.architectures == set(timm.list_models())
    assert list(catalog.swin_v2_settings) == [
        p for p in inspect.signature(SwinTransformerV2.__init__).parameters if p != "self"
    ]
    files = list(fresh_catalog.iterdir())
    assert [f.name for f in files] == [f"timm-{timm.__version__}-catalog.json"]
    # The next process reads the file: the same catalogue, without timm.
    catalog_module.timm_catalog.cache_clear()
    assert catalog_module.timm_catalog() == catalog


def test_a_damaged_or_foreign_cache_file_is_recomputed(fresh_catalog):
    good = catalog_module.timm_catalog()
    (path,) = fresh_catalog.iterdir()
    for text in ("{not json", json.dumps({"format": 1, "timm_version": "0.0.1"}), "[]"):
        path.write_text(text)
        catalog_module.timm_catalog.cache_clear()
        assert catalog_module.timm_catalog() == good
        assert json.loads(path.read_text())["timm_version"] == good.timm_version  # rewritten


def test_a_cache_that_cannot_be_written_costs_only_time(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("DGSCT_CACHE_DIR", str(blocker / "cache"))  # under a file: mkdir fails
    catalog_module.timm_catalog.cache_clear()
    try:
        assert "swinv2_large_window12_192" in catalog_module.timm_catalog().swin_v2
        assert_one_line_error(
            invoke("recipes", "show", "ave-tiny", "model.visual.name=resnet50"),
            "model.visual.name",
            "not a Swin Transformer V2 model",
        )
    finally:
        catalog_module.timm_catalog.cache_clear()


def test_the_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("DGSCT_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert catalog_module.cache_dir() == tmp_path / "xdg" / "dgsct"
    monkeypatch.setenv("DGSCT_CACHE_DIR", str(tmp_path / "mine"))
    assert catalog_module.cache_dir() == tmp_path / "mine"


@pytest.mark.parametrize(
    "name, fragment",
    [
        ("no_such_model", "is not a timm model (Swin-V2 models include swinv2_base_window8_256"),
        ("resnet50.a1_in1k", "is not a Swin Transformer V2 model"),
        ("swinv2_cr_tiny_ns_224", "is not a Swin Transformer V2 model"),
    ],
)
def test_model_names_are_checked_against_the_catalog(name, fragment):
    assert_one_line_error(
        invoke("recipes", "show", "ave-tiny", f"model.visual.name={name}"), "model.visual.name", fragment
    )


def test_a_pretrained_tag_is_accepted_as_timm_accepts_it():
    r = load_recipe("ave-tiny", ["model.visual.name=swinv2_tiny_window8_256.any_tag"])
    assert r.model.visual.name == "swinv2_tiny_window8_256.any_tag"
