"""t-SNE panels of per-segment features, with a silhouette score per panel.

The DG-SCT paper shows t-SNE plots of the frozen encoders' features without and with
the DG-SCT adapters and calls the latter "more compact and separable".  A picture alone
is easy to over-read (t-SNE can make almost anything look clustered), so every panel also
gets a silhouette score computed in the *original* feature space, which is the number
that actually backs the claim; the score on the 2-D embedding is recorded next to it.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import atomic_output

__all__ = [
    "FeaturePanel",
    "embed_tsne",
    "silhouette",
    "plot_tsne_panels",
    "MAX_SILHOUETTE_POINTS",
]

# Silhouette is O(N^2) in time; 5000 points keeps it to about a second on 2 CPU cores
# while the estimate is already stable to ~0.01.
MAX_SILHOUETTE_POINTS = 5000
# Fixed seed for the silhouette subsample so the same features always give the same number.
_SUBSAMPLE_SEED = 0
# PCA target before t-SNE: the usual recommendation, and it makes the neighbour search cheap.
_PCA_DIMS = 50
_BACKGROUND_COLOR = "#cfcfcf"


@dataclass
class FeaturePanel:
    """One t-SNE panel: a set of per-segment features and their integer class labels."""

    title: str
    features: np.ndarray  # [N, D]
    labels: np.ndarray  # [N] ints


def _as_features(features: np.ndarray) -> np.ndarray:
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be 2-D [N, D], got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("features contain NaN or inf")
    return x


def _as_labels(labels: np.ndarray, n: int) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"labels must be 1-D with {n} entries, got shape {y.shape}")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        # Accept float arrays holding whole numbers (e.g. loaded from JSON), nothing else.
        if not np.all(np.isfinite(y)) or not np.all(np.equal(np.mod(y, 1), 0)):
            raise ValueError("labels must be integers")
    return y.astype(np.int64)


def _pca_fallback(x: np.ndarray) -> np.ndarray:
    # t-SNE is meaningless (and sklearn refuses) for a handful of points; the top two
    # principal axes give a deterministic 2-D layout instead.
    n = x.shape[0]
    out = np.zeros((n, 2), dtype=np.float64)
    if n < 2:
        return out
    centred = x - x.mean(axis=0, keepdims=True)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    k = min(2, s.shape[0])
    out[:, :k] = u[:, :k] * s[:k]
    return out


def embed_tsne(features: np.ndarray, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """Embed ``features`` [N, D] into 2-D with scikit-learn's t-SNE; returns [N, 2] float64.

    Features are standardised first (encoders differ wildly in per-channel scale), reduced
    to 50 dims by PCA when wider, and the perplexity is clamped below N/3 so small sets work.
    Fewer than 4 points fall back to a 2-D PCA projection.
    """
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from sklearn.preprocessing import StandardScaler

    x = _as_features(features)
    n, d = x.shape
    if perplexity <= 0:
        raise ValueError(f"perplexity must be positive, got {perplexity}")
    if n < 4 or d == 0:
        return _pca_fallback(x) if d else np.zeros((n, 2))

    x = StandardScaler().fit_transform(x)
    if d > _PCA_DIMS:
        x = PCA(n_components=min(_PCA_DIMS, n), random_state=seed).fit_transform(x)

    # sklearn needs perplexity < N; the usual rule of thumb is N >= 3 * perplexity + 1.
    perp = float(min(perplexity, (n - 1) / 3.0))
    tsne = TSNE(
        n_components=2,
        perplexity=perp,
        init="pca" if x.shape[1] >= 2 else "random",  # PCA init needs >= 2 input dims
        learning_rate="auto",
        random_state=seed,
    )
    return np.asarray(tsne.fit_transform(x), dtype=np.float64)


def silhouette(
    features: np.ndarray,
    labels: np.ndarray,
    exclude: int | None = None,
    metric: str = "cosine",
) -> float | None:
    """Silhouette score of ``labels`` over ``features`` (cosine metric by default).

    Points labelled ``exclude`` (the background class) are dropped first: background is not
    a semantic cluster, so letting it in would reward or punish the wrong thing.  At most
    ``MAX_SILHOUETTE_POINTS`` points are used (fixed-seed subsample).  Returns None when
    fewer than 2 classes or fewer than 3 samples remain, or every point is its own class.
    """
    from sklearn.metrics import silhouette_score

    x = _as_features(features)
    y = _as_labels(labels, x.shape[0])
    if exclude is not None:
        keep = y != exclude
        x, y = x[keep], y[keep]
    if x.shape[0] > MAX_SILHOUETTE_POINTS:
        rng = np.random.default_rng(_SUBSAMPLE_SEED)
        idx = np.sort(rng.choice(x.shape[0], size=MAX_SILHOUETTE_POINTS, replace=False))
        x, y = x[idx], y[idx]
    n = x.shape[0]
    n_classes = np.unique(y).size
    # sklearn requires 2 <= n_labels <= n_samples - 1.
    if n < 3 or n_classes < 2 or n_classes > n - 1:
        return None
    return float(silhouette_score(x, y, metric=metric))


def _palette(n: int) -> list[tuple[float, float, float]]:
    """``n`` distinct qualitative colours, with the greys removed (grey means background)."""
    from matplotlib import colormaps

    if n <= 9:
        base = [c for i, c in enumerate(colormaps["tab10"].colors) if i != 7]
    else:
        tab20 = [c for i, c in enumerate(colormaps["tab20"].colors) if i not in (14, 15)]
        base = tab20 + list(colormaps["tab20b"].colors) + list(colormaps["tab20c"].colors)
    if n <= len(base):
        return [tuple(c) for c in base[:n]]
    # Past ~58 classes colours cannot stay distinguishable anyway; evenly spaced hues at
    # least keep neighbouring class indices apart.
    hsv = colormaps["hsv"]
    return [tuple(hsv(i / n)[:3]) for i in range(n)]


def _atomic_write(path: Path, write: Callable[[str], None], suffix: str) -> None:
    with atomic_output(path, suffix=suffix) as tmp:
        write(str(tmp))


def _class_name(class_names: list[str], idx: int) -> str:
    return class_names[idx] if 0 <= idx < len(class_names) else f"class {idx}"


def plot_tsne_panels(
    panels: list[FeaturePanel],
    class_names: list[str],
    out_path: str | os.PathLike[str],
    background_index: int | None = None,
    seed: int = 0,
    title: str | None = None,
) -> dict[str, dict]:
    """Draw one t-SNE subplot per panel side by side, save a PNG and a JSON of scores.

    Each panel is titled with its silhouette score (original feature space, cosine,
    background excluded).  ``<out_path stem>.json`` next to the PNG holds, per panel:
    title, num_points, num_background, num_classes (foreground classes present),
    silhouette, silhouette_tsne (euclidean on the 2-D embedding) and background_index.
    Returns that dict, keyed by panel title.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    if not panels:
        raise ValueError("no panels to plot")
    titles = [p.title for p in panels]
    if len(set(titles)) != len(titles):
        raise ValueError(f"panel titles must be unique (results are keyed by title): {titles}")
    out = Path(out_path)
    json_path = out.parent / f"{out.stem}.json"
    if json_path == out:
        raise ValueError(f"out_path {out} would collide with its own JSON sidecar")

    # Validate everything before the (slow) t-SNE runs.
    data = []
    for p in panels:
        x = _as_features(p.features)
        data.append((p, x, _as_labels(p.labels, x.shape[0])))

    # Colours are fixed per class index across panels so the same class looks the same
    # in "without" and "with" DG-SCT.
    present = sorted({int(c) for _, _, y in data for c in np.unique(y)} - {background_index})
    colors = dict(zip(present, _palette(len(present)), strict=True))

    n_panels = len(panels)
    many = len(present) > 10
    fig = Figure(figsize=(5.0 * n_panels + (2.5 if many else 0.0), 5.0), dpi=150)
    FigureCanvasAgg(fig)  # attach an Agg canvas; no pyplot, no global backend switch
    axes = fig.subplots(1, n_panels, squeeze=False)[0]

    results: dict[str, dict] = {}
    for ax, (panel, x, y) in zip(axes, data, strict=True):
        emb = embed_tsne(x, seed=seed)
        sil = silhouette(x, y, exclude=background_index)
        # Euclidean on the embedding: t-SNE preserves neighbourhoods by euclidean distance,
        # and the embedding is centred at the origin, so cosine there would only see angles.
        sil_tsne = silhouette(emb, y, exclude=background_index, metric="euclidean")

        n = x.shape[0]
        size = float(np.clip(3000.0 / max(n, 1), 2.0, 25.0))
        is_bg = y == background_index if background_index is not None else np.zeros(n, bool)
        if is_bg.any():
            ax.scatter(
                emb[is_bg, 0],
                emb[is_bg, 1],
                s=size * 0.5,
                c=_BACKGROUND_COLOR,
                alpha=0.6,
                linewidths=0,
                zorder=1,
            )
        for cls in present:
            m = y == cls
            if m.any():
                ax.scatter(
                    emb[m, 0],
                    emb[m, 1],
                    s=size,
                    color=colors[cls],
                    alpha=0.85,
                    linewidths=0,
                    zorder=2,
                )
        sil_txt = "n/a" if sil is None else f"{sil:.2f}"
        ax.set_title(f"{panel.title} (silhouette {sil_txt})", fontsize=11)
        ax.set_xticks([])
        ax.set_yticks([])

        results[panel.title] = {
            "title": panel.title,
            "num_points": int(n),
            "num_background": int(is_bg.sum()),
            "num_classes": int(np.unique(y[~is_bg]).size),
            "silhouette": sil,
            "silhouette_tsne": sil_tsne,
            "background_index": background_index,
        }

    # One shared legend: colours are identical across panels.
    handles = [
        Line2D(
            [], [], linestyle="", marker="o", markersize=6, color=colors[c], label=_class_name(class_names, c)
        )
        for c in present
    ]
    if background_index is not None and any((y == background_index).any() for _, _, y in data):
        handles.append(
            Line2D(
                [],
                [],
                linestyle="",
                marker="o",
                markersize=5,
                color=_BACKGROUND_COLOR,
                label=_class_name(class_names, background_index),
            )
        )
    if title:
        fig.suptitle(title, fontsize=13)
    if handles:
        if many:
            ncol = math.ceil(len(handles) / 22)
            fig.legend(
                handles=handles,
                loc="center left",
                bbox_to_anchor=(1.0, 0.5),
                fontsize=7,
                ncol=ncol,
                frameon=False,
            )
        else:
            axes[-1].legend(handles=handles, loc="best", fontsize=7, framealpha=0.8)
    fig.tight_layout()

    # bbox_inches="tight" pulls the outside legend into the saved image.
    _atomic_write(out, lambda tmp: fig.savefig(tmp, format="png", bbox_inches="tight"), ".png")
    payload = json.dumps(results, indent=2, allow_nan=False) + "\n"
    _atomic_write(json_path, lambda tmp: Path(tmp).write_text(payload, encoding="utf-8"), ".json")
    return results
