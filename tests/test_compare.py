"""Every row of the paper's comparison through the command line, on the synthetic AVE set: tiny
DG-SCT, LAVisH*, LAVisH (one shared Swin) and the frozen baseline learn it; ``dgsct compare`` puts
three of them in one table (Markdown, JSON, a bar chart) beside the paper's rows; ``visualize tsne
--baseline`` draws the trained baseline; a LAVisH-layout state dict converts and evaluates."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import invoke, ok

from dgsct_cli.compare import ComparedRun, Comparison, comparison_markdown, write_comparison

RUNS = {
    "dgsct": ("ave-tiny",),
    "lavish-star": ("ave-lavish-star-tiny",),
    "frozen": ("ave-tiny", "model.adapter.kind=none"),
    "lavish": ("ave-lavish-tiny", "train.epochs=4"),
}


class _Runs(dict):
    """Run folders by name, each trained the first time a test asks for it."""

    def __init__(self, root: Path, data: Path) -> None:
        super().__init__()
        self.root, self.data = root, data

    def __missing__(self, name: str) -> Path:
        recipe, *overrides = RUNS[name]
        run = self.root / name
        ok("--quiet", "train", "--recipe", recipe, "--data", self.data, "--output", run, *overrides)
        self[name] = run
        return run


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    data = root / "C"
    # One decoding process: a spawn pool's start costs more than 24 small videos (the pool has tests
    # of its own in test_data_ave.py and test_reliability.py).
    ok("--quiet", "prepare", "ave", "--synthetic", "--out", data, "--videos", 24, "--image-size", 64,
       "--workers", 1)  # fmt: skip
    return SimpleNamespace(root=root, data=data, runs=_Runs(root, data))


def _test_accuracy(ws, run: Path) -> float:
    out = ws.root / f"{run.name}.json"
    ok("--quiet", "eval", "--checkpoint", run, "--data", ws.data, "--json", out)
    return json.loads(out.read_text())["accuracy"]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(RUNS))
def test_every_kind_learns_the_synthetic_set(ws, name):
    """Test accuracy well above the share of the most frequent segment label (about 40 %)."""
    assert _test_accuracy(ws, ws.runs[name]) >= 70.0


@pytest.mark.slow
def test_compare_three_runs_table_json_markdown_and_chart(ws):
    md, js, png = ws.root / "cmp.md", ws.root / "cmp.json", ws.root / "cmp.png"
    runs = [ws.runs["dgsct"], ws.runs["lavish-star"], ws.runs["frozen"]]
    result = ok("compare", *runs, "--data", ws.data, "--out", md, "--out", js, "--out", png)
    assert "DG-SCT" in result.output and "LAVisH*" in result.output and "frozen baseline" in result.output
    table = json.loads(js.read_text())
    assert table["task"] == "ave" and table["split"] == "test"
    assert [c["key"] for c in table["columns"]] == ["accuracy"]
    by_run = {r["name"]: r for r in table["runs"]}
    assert {k: by_run[k]["method"] for k in by_run} == {
        "dgsct": "DG-SCT",
        "lavish-star": "LAVisH*",
        "frozen": "frozen baseline",
    }
    assert {k: by_run[k]["adapter_kind"] for k in by_run} == {
        "dgsct": "dgsct",
        "lavish-star": "lavish",
        "frozen": "none",
    }
    # The frozen baseline trains its head only; LAVisH* trains fewer adapter weights than DG-SCT.
    trainable = {k: by_run[k]["trainable_parameters"] for k in by_run}
    assert trainable["frozen"] < trainable["lavish-star"] < trainable["dgsct"]
    # The same numbers `dgsct eval` gives.
    for name in by_run:
        assert by_run[name]["metrics"]["accuracy"] == pytest.approx(_test_accuracy(ws, ws.runs[name]))
    # The paper's rows, each after its method's run; none for the frozen baseline.
    kinds = [(r["kind"], r["method"]) for r in table["rows"]]
    assert kinds == [
        ("run", "DG-SCT"),
        ("paper", "DG-SCT"),
        ("run", "LAVisH*"),
        ("paper", "LAVisH*"),
        ("run", "frozen baseline"),
    ]
    assert table["published"] == {"DG-SCT": {"accuracy": 82.2}, "LAVisH*": {"accuracy": 78.6}}
    text = md.read_text()
    assert "| paper | DG-SCT |" in text and "| paper | LAVisH* |" in text and "82.2" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_tsne_draws_the_trained_baseline_beside_dgsct(ws):
    fig = ws.root / "tsne.png"
    ok(
        "visualize",
        "tsne",
        "-c",
        ws.runs["dgsct"],
        "-d",
        ws.data,
        "--baseline",
        ws.runs["frozen"],
        "--out",
        fig,
    )
    scores = json.loads(fig.with_suffix(".json").read_text())
    assert list(scores) == [
        "visual: adapters removed",
        "visual: trained frozen baseline (frozen)",
        "visual: DG-SCT",
        "audio: adapters removed",
        "audio: trained frozen baseline (frozen)",
        "audio: DG-SCT",
    ]
    result = invoke(
        "visualize",
        "tsne",
        "-c",
        ws.runs["dgsct"],
        "-d",
        ws.data,
        "--baseline",
        ws.root / "nope",
        "--out",
        fig,
    )
    assert result.exit_code == 1 and "nope" in result.stderr


def _lavish_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our LAVisH (swinv2-shared) AVE state dict -> the key layout of LAVisH's ``MMIL_Net``."""
    out = {}
    for key, value in state.items():
        if key.startswith("encoder.visual."):
            # timm 0.6's layout, which LAVisH used: patch merging at the end of the previous stage.
            key = re.sub(
                r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", key
            )
            out["swin." + key[len("encoder.visual.") :]] = value
        elif key.startswith("encoder."):
            out[key[len("encoder.") :]] = value
        elif key.startswith("head."):
            out[key[len("head.") :]] = value
    out["adapter_token_downsampler.0.weight"] = torch.zeros(4, 2)  # built by LAVisH, never run
    return out


@pytest.mark.slow
def test_a_lavish_mmil_net_state_dict_evaluates_and_converts(ws):
    from dgsct_cli.checkpoint import load_checkpoint
    from dgsct_cli.config import load_recipe, recipe_to_yaml

    model, _, _ = load_checkpoint(ws.runs["lavish"] / "best.safetensors")
    path = ws.root / "MMIL_Net.pt"
    torch.save(_lavish_layout(model.state_dict()), path)
    # A release file carries no recipe: the classes of the synthetic set are given by one.
    classes = model.cfg.head.num_classes
    recipe = ws.root / "lavish-tiny.yaml"
    recipe.write_text(recipe_to_yaml(load_recipe("ave-lavish-tiny", [f"model.head.num_classes={classes}"])))
    a, b = ws.root / "release.json", ws.root / "converted.json"
    ok("eval", "--checkpoint", path, "--recipe", recipe, "--data", ws.data, "--json", a)
    converted = ws.root / "lavish.safetensors"
    ok("convert", "ave-lavish", path, "--out", converted, "--recipe", recipe)
    ok("eval", "--checkpoint", converted, "--data", ws.data, "--json", b)
    first, second = json.loads(a.read_text()), json.loads(b.read_text())
    assert first["checkpoint_kind"] == "release" and second["checkpoint_kind"] == "dgsct"
    assert first["accuracy"] == second["accuracy"] == pytest.approx(_test_accuracy(ws, ws.runs["lavish"]))
    result = invoke("convert", "ave", path, "--out", ws.root / "x.safetensors", "--recipe", "ave-tiny")
    assert result.exit_code == 1 and "this is an AVE-LAVISH release checkpoint, expected AVE" in " ".join(
        result.stderr.split()
    )


# -- presentation, without models -----------------------------------------------------------------


def _comparison() -> Comparison:
    def run(name, method, kind, acc):
        return ComparedRun(name, name, "dgsct", method, kind, "swinv2-htsat", 1000, 5000, {"accuracy": acc})

    runs = [
        run("a", "DG-SCT", "dgsct", 90.0),
        run("b", "LAVisH", "lavish", 85.5),
        run("c", "DG-SCT", "dgsct", 91.25),
    ]
    published = {"DG-SCT": {"accuracy": 82.2}, "LAVisH": {"accuracy": [81.1, 79.7]}}
    return Comparison("ave", "test", "C", [("accuracy", "accuracy")], runs, published)


def test_the_table_puts_each_methods_paper_row_after_its_first_run(tmp_path):
    c = _comparison()
    assert [(r["name"], r["method"]) for r in c.rows()] == [
        ("a", "DG-SCT"),
        ("paper", "DG-SCT"),
        ("b", "LAVisH"),
        ("paper", "LAVisH"),
        ("c", "DG-SCT"),
    ]
    text = comparison_markdown(c)
    assert (
        "| paper | LAVisH |  |  | 81.1 / 79.7 |" in text and "| c | DG-SCT | dgsct | 0.001M | 91.25 |" in text
    )
    for suffix in (".md", ".json", ".png"):
        assert write_comparison(c, tmp_path / f"t{suffix}").is_file()
    assert json.loads((tmp_path / "t.json").read_text())["published"]["LAVisH"]["accuracy"] == [81.1, 79.7]
    with pytest.raises(ValueError, match="takes a .md, .json or .png file"):
        write_comparison(c, tmp_path / "t.txt")


def test_compare_refuses_an_output_it_cannot_write_before_any_work(tmp_path):
    result = invoke("compare", tmp_path / "run", "--data", tmp_path, "--out", tmp_path / "x.csv")
    assert result.exit_code == 1 and "expected a .md, .json or .png file" in result.stderr
