"""``dgsct bench``: time a recipe's model on random inputs (register with ``app.command("bench")(bench)``)."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import command, console


@command
def bench(
    recipe: str = typer.Option(..., "--recipe", "-r", help="Recipe name (recipes/<name>.yaml) or path."),
    batch_size: int | None = typer.Option(
        None, "--batch-size", "-b", min=1, help="Default: the recipe's train (or eval) batch size."
    ),
    steps: int = typer.Option(3, "--steps", min=1, help="Timed steps (the median is reported)."),
    warmup: int = typer.Option(1, "--warmup", min=0, help="Untimed steps first."),
    random_init: bool = typer.Option(
        True,
        "--random-init/--load-weights",
        help="Random encoder weights (no weight files needed) or the recipe's weight files.",
    ),
    device: str = typer.Option(
        "auto", "--device", help="auto (CUDA, then Apple MPS, then CPU), cpu, cuda or mps."
    ),
    dtype: str = typer.Option(
        "auto", "--dtype", help="auto (bf16 on CUDA, fp32 on CPU and MPS), fp32 or bf16."
    ),
    recompute: bool | None = typer.Option(
        None,
        "--recompute/--no-recompute",
        help="Force activation checkpointing of the encoders on/off (default: the recipe's model.recompute).",
    ),
    mode: str = typer.Option("train", "--mode", help="train (forward, backward, Adam step) or eval."),
    data: Path | None = typer.Option(
        None, "--data", "-d", help="Prepared cache: also measure the DataLoader's samples/s."
    ),
    json_out: Path | None = typer.Option(None, "--json", help="Write the results here (JSON)."),
    profile: Path | None = typer.Option(
        None,
        "--profile",
        help="Profile one step into this folder: trace.json (Chrome trace), top_kernels.txt, profile.json.",
    ),
    compile_regions: str | None = typer.Option(
        None,
        "--compile-regions",
        help="auto (on for CUDA), on or off: torch.compile each encoder block and adapter (default: the recipe's).",
    ),
    overrides: list[str] = typer.Argument(None, help="key.path=value recipe overrides."),
) -> None:
    """Time training or inference steps of a recipe's model at its real size on random inputs."""
    from ..atomic import atomic_write_json
    from ..bench import run_bench
    from ..config import load_recipe

    if compile_regions not in (None, "auto", "on", "off"):
        raise ValueError(f"--compile-regions must be auto, on or off, got {compile_regions!r}")
    r = load_recipe(recipe, overrides or [])
    result = run_bench(
        r,
        batch_size=batch_size,
        steps=steps,
        warmup=warmup,
        random_init=random_init,
        device=device,
        dtype=dtype,
        recompute=recompute,
        mode=mode,
        data=data,
        console=console,
        profile_dir=profile,
        compile_regions=compile_regions,
    )
    if json_out is not None:
        atomic_write_json(json_out, result)
        console.print(f"wrote {json_out}", markup=False, highlight=False)
