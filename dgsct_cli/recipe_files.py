"""Where recipes are and how a recipe file is read (YAML only): what ``dgsct recipes list`` needs,
without the typed settings (which import the model code, and so torch)."""

from __future__ import annotations

import difflib
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .schema import RecipeError

__all__ = ["builtin_recipe_dir", "find_recipe", "read_yaml", "recipe_files"]


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def builtin_recipe_dir() -> Path:
    """The recipes shipped inside the package."""
    return Path(str(resources.files("dgsct_cli") / "recipes"))


def recipe_files() -> list[Path]:
    """The built-in recipes and those in ``./recipes`` (each file once, built-ins first)."""
    seen: set[Path] = set()
    out = []
    for folder in (builtin_recipe_dir(), Path("recipes")):
        for path in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
            real = path.resolve()
            if real not in seen:
                seen.add(real)
                out.append(path)
    return out


def find_recipe(name_or_path: str) -> Path:
    """A path to a file, or a recipe name (``ave``, ``ave.yaml``) looked up in ``./recipes`` and
    among the built-in recipes."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    if p.is_dir():
        raise RecipeError(f"{name_or_path}: is a folder, not a recipe file")
    stem = p.name[: -len(".yaml")] if p.name.endswith((".yaml", ".yml")) else p.name
    if p.parent == Path("."):
        for folder in (Path("recipes"), builtin_recipe_dir()):
            for candidate in (folder / f"{stem}.yaml", folder / f"{stem}.yml"):
                if candidate.is_file():
                    return candidate
    known = sorted({x.stem for x in recipe_files()})
    close = difflib.get_close_matches(stem, known, n=1, cutoff=0.6)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise RecipeError(f"{name_or_path}: recipe not found{hint}; known recipes: {', '.join(known) or 'none'}")


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise RecipeError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise RecipeError(f"{path}: cannot be read ({exc.strerror})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML ({_one_line(exc)})") from None
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: expected a mapping at the top level")
    return raw
