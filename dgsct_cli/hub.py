"""Share a trained run: a folder in the Hugging Face Hub's layout, the upload, and ``hf://`` paths.

``export_run(RUN, OUT)`` writes::

    model.safetensors   the run's best checkpoint (our format: the resolved recipe and the class
                        names are in its metadata, so eval/predict need nothing else)
    config.json         the resolved recipe and what the weights need: the encoder files (path,
                        size, SHA-256) a delta checkpoint rebuilds the frozen towers from, the
                        class names, the metrics, the command that trained it
    README.md           the model card

``push_run`` uploads that folder with ``huggingface_hub`` (the ``dgsct[hub]`` extra);
``download_checkpoint("hf://OWNER/REPO[@REV]")`` fetches a repository's ``model.safetensors``
(``checkpoint.resolve_run_checkpoint`` calls it for ``hf://`` paths, and only for them).
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import shutil
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console

from . import __version__
from .atomic import atomic_output, atomic_write_bytes, atomic_write_json
from .models.weights import CheckpointError
from .run_index import read_json_object

__all__ = [
    "EXPORT_FORMAT",
    "MODEL_FILE",
    "download_checkpoint",
    "export_run",
    "is_hf_uri",
    "model_card",
    "parse_hf_uri",
    "push_run",
]

MODEL_FILE = "model.safetensors"
EXPORT_FORMAT = "dgsct-export-1"
_REPO = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


# -- hf:// -------------------------------------------------------------------------------------------


def is_hf_uri(path: str | Path) -> bool:
    # A typed Path option turns "hf://a/b" into "hf:/a/b".
    return str(path).startswith(("hf://", "hf:/"))


def parse_hf_uri(path: str | Path) -> tuple[str, str | None]:
    """``hf://OWNER/REPO[@REV]`` -> (``OWNER/REPO``, ``REV`` or None)."""
    text = str(path)
    rest = text[5:] if text.startswith("hf://") else text[4:]
    repo, _, revision = rest.partition("@")
    repo = repo.strip("/")
    if not _REPO.match(repo) or (_ and not revision):
        raise CheckpointError(f"{text}: expected hf://OWNER/REPO or hf://OWNER/REPO@REVISION")
    return repo, revision or None


def _hub():
    try:
        import huggingface_hub
    except ImportError:
        raise ValueError(
            "the Hugging Face Hub needs the huggingface_hub package: pip install 'dgsct[hub]'"
        ) from None
    return huggingface_hub


def download_checkpoint(path: str | Path) -> Path:
    """The ``model.safetensors`` of a Hub repository in dgsct's export layout (downloaded to the
    Hugging Face cache, or taken from it; ``HF_HUB_OFFLINE=1`` uses the cache alone)."""
    repo, revision = parse_hf_uri(path)
    hub = _hub()
    try:
        folder = hub.snapshot_download(
            repo_id=repo, revision=revision, allow_patterns=[MODEL_FILE, "config.json", "README.md"]
        )
    except Exception as exc:  # not found, no access, offline without a cached copy
        raise CheckpointError(
            f"hf://{repo}{'@' + revision if revision else ''}: cannot download "
            f"({type(exc).__name__}: {' '.join(str(exc).split())[:300]})"
        ) from None
    model = Path(folder) / MODEL_FILE
    if not model.is_file():
        raise CheckpointError(f"hf://{repo}: the repository has no {MODEL_FILE} (not a dgsct export)")
    return model


# -- export ------------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def encoder_files(recipe_dict: dict[str, Any], included: bool) -> dict[str, dict[str, Any]]:
    """The files the frozen towers are read from (``model.<tower>.weights`` / ``.tokenizer``)."""
    out = {}
    for tower in ("visual", "audio", "text"):
        section = recipe_dict.get("model", {}).get(tower) or {}
        for key in ("weights", "tokenizer"):
            value = section.get(key) if isinstance(section, dict) else None
            if not isinstance(value, str) or not value:
                continue
            entry: dict[str, Any] = {"path": value, "name": Path(value).name, "included": included}
            p = Path(value)
            if p.is_file():
                entry.update(size=p.stat().st_size, sha256=_sha256(p))
            out[f"model.{tower}.{key}"] = entry
    return out


def _command(record: dict[str, Any]) -> str | None:
    recipe = record.get("recipe")
    if not recipe:
        return None
    name = Path(str(recipe)).name
    name = name.rsplit(".", 1)[0] if name.endswith((".yaml", ".yml")) else str(recipe)
    args = ["dgsct", "train", "--recipe", name, "--data", "DATA", *record.get("overrides", [])]
    line = " ".join(shlex.quote(a) if a != "DATA" else a for a in args)
    if record.get("resume_overrides"):
        resumed = " ".join(shlex.quote(a) for a in record["resume_overrides"])
        line += f"\n# then resumed with: dgsct train --output RUN --resume {resumed}"
    return line


def _fmt(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, int | float) else "-"


def _millions(n: int) -> str:
    return f"{n / 1e6:.1f}M"


def model_card(config: dict[str, Any]) -> str:
    """The README.md of an export (Hub model-card front matter + what a reader needs)."""
    task, recipe = config["task"], config["recipe"]
    m = config["metrics"]
    selection, test, paper = m["selection"], m.get("test") or {}, m.get("paper") or {}
    licences = config.get("licenses", {})
    spdx = {lic for _, lic in licences.values()}
    licence = next(iter(spdx)) if len(spdx) == 1 else "other"
    lines = [
        "---",
        "library_name: dgsct",
        f"license: {licence}",
        "tags:",
        "- dgsct",
        "- dg-sct",
        "- audio-visual",
        f"- {task}",
        "---",
        "",
        f"# DG-SCT {task.upper()}: {config['name']}",
        "",
        'DG-SCT adapters (Dual-Guided Spatial-Channel-Temporal attention; "Cross-modal Prompts: Adapting',
        'Large Pre-trained Models for Audio-Visual Downstream Tasks", NeurIPS 2023) and a '
        f"{task.upper()} head on frozen `{recipe['model']['family']}` encoders, trained with dgsct "
        f"{config['dgsct_version']}.",
        "",
        "## Task and data",
        "",
        f"- task: `{task}`" + (f" ({config['task_description']})" if config.get("task_description") else ""),
        f"- dataset: {config.get('dataset') or 'unknown'}, {len(config.get('class_names') or [])} classes",
        f"- recipe: `{config['trained_with'].get('recipe') or recipe.get('name')}`",
        "",
        "## Results",
        "",
        f"Selection rule: the epoch with the highest `{selection['metric']}` on the "
        f"`{selection['split']}` split ({selection['tie_rule']}); epoch {selection['epoch']} of "
        f"{selection['epochs_done']} trained.",
        "",
        "| metric | "
        + f"{selection['split']} (selection) | "
        + (f"{test.get('split', 'test')} | " if test else "")
        + "paper (test) |",
        "|---|---|" + ("---|" if test else "") + "---|",
    ]
    keys = list(dict.fromkeys([selection["metric"], *selection["values"], *test.get("values", {}), *paper]))
    for key in keys:
        row = [key, _fmt(selection["values"].get(key))]
        if test:
            row.append(_fmt(test.get("values", {}).get(key)))
        row.append(_fmt(paper.get(key)))
        if any(v != "-" for v in row[1:]):
            lines.append("| " + " | ".join(row) + " |")
    if paper:
        lines += ["", "The paper's column is the published test number of the full-size model."]
    command = config["trained_with"].get("command")
    lines += ["", "## How it was trained", ""]
    if command:
        lines += ["```bash", command, "```", ""]
    lines.append(
        f"Device: {config['trained_with'].get('device') or 'unknown'}. The resolved recipe is in "
        "`config.json` (`recipe`) and in the checkpoint's metadata."
    )
    counts = config.get("parameters") or {}
    if counts:
        lines += ["", "## Parameters", "", "| part | parameters |", "|---|---|"]
        lines += [f"| {k.replace('_', ' ')} | {v:,} ({_millions(v)}) |" for k, v in counts.items()]
    lines += ["", "## Encoders and licences", ""]
    files = config.get("encoder_files") or {}
    contents = config["checkpoint"]["contents"]
    if contents == "full":
        lines.append("`model.safetensors` holds every weight, the frozen encoders included.")
    else:
        lines.append(
            "`model.safetensors` holds what training changed (adapters, head, BatchNorm statistics); "
            "the frozen encoders are read from these files at the recipe's paths "
            "(`config.json` lists their sizes and SHA-256):"
        )
    lines.append("")
    lines += ["| tower | model and source | licence | file |", "|---|---|---|---|"]
    for tower, (what, lic) in licences.items():
        tower_files = [f"`{v['name']}`" for k, v in files.items() if k.startswith(f"model.{tower}.")]
        lines.append(f"| {tower} | {what} | {lic} | {', '.join(tower_files) or 'random init'} |")
    lines += [
        "",
        "## Use",
        "",
        "```bash",
        "pip install 'dgsct[hub]'",
        "dgsct eval --checkpoint hf://OWNER/REPO --data DATA --split test",
        "dgsct predict --checkpoint hf://OWNER/REPO my_clip.mp4",
        "```",
        "",
    ]
    return "\n".join(lines)


def _is_export(folder: Path) -> bool:
    return (folder / MODEL_FILE).is_file() and read_json_object(folder / "config.json").get(
        "format"
    ) == EXPORT_FORMAT


def export_run(run: str | Path, out: str | Path, full: bool = False) -> dict[str, Any]:
    """Write ``out`` (see the module docstring) from a run folder (its best checkpoint, else its
    last) or a checkpoint file; ``full`` also stores the frozen encoders' weights."""
    from .checkpoint import (
        checkpoint_recipe,
        load_checkpoint,
        read_metadata,
        resolve_run_checkpoint,
        save_checkpoint,
    )
    from .factory import build_model
    from .models.encoders.base import get_family
    from .schema import to_dict
    from .tasks.base import get_task

    run, out = Path(run), Path(out)
    source = resolve_run_checkpoint(run)
    folder = run if run.is_dir() else source.parent  # the run's records sit beside its checkpoint
    if out.resolve() == folder.resolve():
        raise ValueError(f"--out {out}: is the run folder itself; choose another folder")
    meta = read_metadata(source)
    recipe, _ = checkpoint_recipe(source)
    task = get_task(recipe.task)
    out.mkdir(parents=True, exist_ok=True)
    contents = meta.get("contents", "delta")
    if full and contents != "full":
        model, _, metrics = load_checkpoint(source)  # reads the encoder files
        extra = {k: meta[k] for k in ("data",) if k in meta}
        save_checkpoint(model, recipe, out / MODEL_FILE, full=True, metrics=metrics, extra=extra)
        contents = "full"
    else:
        with atomic_output(out / MODEL_FILE) as tmp:
            shutil.copyfile(source, tmp)
        model = None
    if model is None:
        model = build_model(recipe, load_encoder_weights=False)  # random weights: counts only
    counts = model.parameter_counts()
    del model

    data = json.loads(meta.get("data", "{}") or "{}")
    record = read_json_object(folder / "run.json")
    best = read_json_object(folder / "best.json") or json.loads(meta.get("metrics", "{}") or "{}")
    epochs_done = max(
        (json.loads(line).get("epoch", 0) for line in _lines(folder / "metrics.jsonl")),
        default=best.get("epoch"),
    )

    def numbers(values: dict[str, Any] | None) -> dict[str, float]:
        # Metrics only: counts (num_samples, ...) and nested tables stay in the JSON files.
        return {
            k: v
            for k, v in (values or {}).items()
            if isinstance(v, int | float) and not isinstance(v, bool) and not k.startswith("num_")
        }

    test_file = (
        read_json_object(folder / "test_metrics.json")
        or read_json_object(folder / "fewshot.json").get("test_metrics")
        or {}
    )
    paper = dict(getattr(task, "paper_results", {}) or {})
    shots = recipe.data.shots
    published = getattr(task, "published", None)
    if shots and isinstance(published, dict) and shots in published:
        paper.setdefault(task.selection_metric, published[shots])  # few-shot: the paper's K-shot number
    family = get_family(recipe.model.family)
    recipe_dict = to_dict(recipe)
    config = {
        "format": EXPORT_FORMAT,
        "dgsct_version": __version__,
        "name": folder.resolve().name,
        "task": recipe.task,
        "task_description": task.description,
        "family": recipe.model.family,
        "checkpoint": {
            "file": MODEL_FILE,
            "contents": contents,
            "source": source.name,
            "sha256": meta.get("sha256"),
        },
        "encoder_files": encoder_files(recipe_dict, included=contents == "full"),
        "licenses": {k: list(v) for k, v in getattr(family, "licenses", {}).items()},
        "dataset": data.get("dataset"),
        "class_names": data.get("class_names", []),
        "background_index": data.get("background_index"),
        "metrics": {
            "selection": {
                "metric": task.selection_metric,
                "split": recipe.data.val_split,
                "tie_rule": "ties go to the later epoch"
                if task.select_ties
                else "ties keep the earlier epoch",
                "epoch": best.get("best_epoch", best.get("epoch")),
                "epochs_done": epochs_done,
                "values": numbers(best.get("val")),
            },
            "test": {"split": test_file.get("split", recipe.data.test_split), "values": numbers(test_file)}
            if test_file
            else None,
            "paper": paper,
        },
        "parameters": {k: counts[k] for k in ("total", "trainable", "adapters", "head") if k in counts},
        "trained_with": {
            "recipe": Path(str(record.get("recipe", recipe.source))).name or None,
            "overrides": record.get("overrides", []),
            "resume_overrides": record.get("resume_overrides", []),
            "command": _command(record),
            "device": recipe.train.device,
        },
        "recipe": recipe_dict,
    }
    atomic_write_json(out / "config.json", config)
    atomic_write_bytes(out / "README.md", model_card(config).encode("utf-8"))
    return config


def _lines(path: Path) -> list[str]:
    try:
        return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError:
        return []


# -- push --------------------------------------------------------------------------------------------


def push_run(
    run: str | Path,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    full: bool = False,
    token: str | None = None,
    console: Console | None = None,
) -> str:
    """Export ``run`` (or take an export folder as it is) and upload it to ``repo_id`` (created if
    missing); returns the commit's URL."""
    if not _REPO.match(repo_id):
        raise ValueError(f"{repo_id}: expected a repository id OWNER/NAME")
    hub = _hub()
    run = Path(run)
    with tempfile.TemporaryDirectory(prefix="dgsct-export-") as tmp:
        folder = run if _is_export(run) else Path(tmp)
        if folder != run:
            export_run(run, folder, full=full)
        api = hub.HfApi(token=token)
        try:
            api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
            if revision:
                api.create_branch(repo_id, branch=revision, exist_ok=True)
            info = api.upload_folder(
                folder_path=str(folder),
                repo_id=repo_id,
                repo_type="model",
                revision=revision,
                commit_message=commit_message or f"dgsct export of {run.resolve().name}",
            )
        except Exception as exc:  # no token, no permission, no network
            raise ValueError(
                f"push to {repo_id}: {type(exc).__name__}: {' '.join(str(exc).split())[:300]} "
                "(log in with 'hf auth login' or set HF_TOKEN)"
            ) from None
    return str(getattr(info, "commit_url", None) or info)
