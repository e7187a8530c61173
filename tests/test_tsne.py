"""Tests for the t-SNE panels and their silhouette scores (synthetic Gaussian blobs)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dgsct_cli.viz.tsne import (
    MAX_SILHOUETTE_POINTS,
    FeaturePanel,
    embed_tsne,
    plot_tsne_panels,
    silhouette,
)

BG = 0  # background label
CLASS_NAMES = ["background", "dog", "car", "violin", "speech"]
PER_CLASS = 30
DIM = 16


def _blobs(seed: int = 0, spread_bg: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """4 tight foreground blobs (labels 1..4) plus a background class (label 0)."""
    rng = np.random.default_rng(seed)
    feats, labels = [], []
    for cls in range(1, 5):
        # Centres far from the origin in different directions so cosine separates them too.
        centre = rng.normal(size=DIM) * 6.0
        feats.append(centre + rng.normal(size=(PER_CLASS, DIM)))
        labels.append(np.full(PER_CLASS, cls))
    bg_scale = 8.0 if spread_bg else 1.0
    bg_centre = np.zeros(DIM) if spread_bg else rng.normal(size=DIM) * 6.0
    feats.append(bg_centre + rng.normal(size=(PER_CLASS, DIM)) * bg_scale)
    labels.append(np.full(PER_CLASS, BG))
    return np.concatenate(feats), np.concatenate(labels)


def test_separated_panel_scores_higher_than_shuffled_and_overlapping() -> None:
    x, y = _blobs()
    shuffled = np.random.default_rng(1).permutation(y)
    overlapping = np.random.default_rng(2).normal(size=x.shape)

    good = silhouette(x, y, exclude=BG)
    bad = silhouette(x, shuffled, exclude=BG)
    overlap = silhouette(overlapping, y, exclude=BG)
    assert good is not None and bad is not None and overlap is not None
    assert good > 0.5
    assert good > bad + 0.4
    assert good > overlap + 0.4


def test_background_exclusion_changes_score_when_background_spread() -> None:
    x, y = _blobs(spread_bg=True)
    with_bg = silhouette(x, y)
    without_bg = silhouette(x, y, exclude=BG)
    assert with_bg is not None and without_bg is not None
    # A diffuse background overlaps every class, so it drags the score down.
    assert without_bg > with_bg + 0.05
    # Excluding a label is the same as scoring only the remaining points.
    fg = y != BG
    assert without_bg == pytest.approx(silhouette(x[fg], y[fg]))


def test_too_few_classes_or_samples_returns_none() -> None:
    x, y = _blobs()
    one_class = np.where(y == BG, BG, 1)
    assert silhouette(x, one_class, exclude=BG) is None
    assert silhouette(x, np.zeros_like(y)) is None
    assert silhouette(x[:2], np.array([1, 2])) is None
    # Excluding the background can leave too few points.
    assert silhouette(x[:4], np.array([BG, BG, 1, 2]), exclude=BG) is None


def test_silhouette_subsamples_deterministically() -> None:
    rng = np.random.default_rng(0)
    n = MAX_SILHOUETTE_POINTS + 300
    y = rng.integers(0, 3, size=n)
    x = rng.normal(size=(n, 4)) + np.eye(4)[y] * 3.0
    a = silhouette(x, y)
    assert a is not None and a == silhouette(x, y)


def test_embed_tsne_shapes_small_n_and_wide_features() -> None:
    rng = np.random.default_rng(0)
    small = embed_tsne(rng.normal(size=(10, 8)), seed=0)  # perplexity must be clamped
    assert small.shape == (10, 2) and np.all(np.isfinite(small))
    wide = rng.normal(size=(60, 120))  # goes through the PCA-to-50 path
    a = embed_tsne(wide, seed=3)
    assert a.shape == (60, 2)
    np.testing.assert_allclose(a, embed_tsne(wide, seed=3))  # deterministic per seed
    assert embed_tsne(rng.normal(size=(3, 5))).shape == (3, 2)  # PCA fallback
    with pytest.raises(ValueError):
        embed_tsne(np.array([[np.nan, 1.0], [0.0, 1.0]]))


def test_plot_writes_png_and_json(tmp_path) -> None:
    x, y = _blobs()
    shuffled = np.random.default_rng(1).permutation(y)
    panels = [
        FeaturePanel("w/o DG-SCT", x, shuffled),
        FeaturePanel("DG-SCT", x, y),
    ]
    out = tmp_path / "figs" / "tsne_ave.png"  # parent dir does not exist yet
    result = plot_tsne_panels(panels, CLASS_NAMES, out, background_index=BG, title="AVE")

    assert out.read_bytes().startswith(b"\x89PNG")
    sidecar = out.with_suffix(".json")
    on_disk = json.loads(sidecar.read_text())
    assert on_disk == result
    assert set(on_disk) == {"w/o DG-SCT", "DG-SCT"}
    # No temp files left behind by the atomic writes.
    assert sorted(p.name for p in out.parent.iterdir()) == ["tsne_ave.json", "tsne_ave.png"]

    for panel in panels:
        entry = on_disk[panel.title]
        assert entry["title"] == panel.title
        assert entry["num_points"] == 5 * PER_CLASS
        assert entry["num_background"] == PER_CLASS
        assert entry["num_classes"] == 4
        assert entry["background_index"] == BG
        assert entry["silhouette"] == pytest.approx(silhouette(panel.features, panel.labels, exclude=BG))
        assert -1.0 <= entry["silhouette_tsne"] <= 1.0
    good, bad = on_disk["DG-SCT"], on_disk["w/o DG-SCT"]
    assert good["silhouette"] > bad["silhouette"]
    assert good["silhouette_tsne"] > bad["silhouette_tsne"]


def test_plot_rejects_duplicate_titles(tmp_path) -> None:
    x, y = _blobs()
    with pytest.raises(ValueError, match="unique"):
        plot_tsne_panels([FeaturePanel("a", x, y), FeaturePanel("a", x, y)], CLASS_NAMES, tmp_path / "t.png")
