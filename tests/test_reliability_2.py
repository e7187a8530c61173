"""Nothing lost, nothing silent, part 2 (issue 22): a new run never eats a finished one, each epoch
is logged once, a full disk is one line naming the file and leaves the run resumable, an
interrupted few-shot run can be completed, checkpoints verify their metadata and the encoder files
they were trained with, few-shot validation sees the current prompts, and unchecked settings,
damaged files and odd inputs get one line."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, invoke
from rich.console import Console
from safetensors.torch import load_file
from test_fewshot_files import tiny_overrides, write_tiny_files

from dgsct_cli.config import load_recipe
from dgsct_cli.runs import STATE_DIR
from dgsct_cli.train import Trainer

BASE = ["data.num_workers=0", "train.batch_size=2", "train.epochs=2", "train.grad_accum=2"]


def assert_error_ends_the_output(result, *fragments: str) -> str:
    """Exit 1 with one error line, the last one (progress lines may come before it)."""
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and result.stderr.strip().splitlines()[-1] == errors[0], result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def trainer(data: Path, out: Path, *overrides: str, **hooks) -> Trainer:
    recipe = load_recipe("ave-tiny", [*BASE, *overrides])
    return Trainer(recipe, data, out, console=Console(quiet=True), show_progress=False, **hooks)


def same_weights(a: Path, b: Path) -> bool:
    x, y = load_file(str(a)), load_file(str(b))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def metric_lines(run: Path) -> list[dict]:
    drop = ("seconds", "samples_per_second")
    return [
        {k: v for k, v in json.loads(line).items() if k not in drop}
        for line in (run / "metrics.jsonl").read_text().splitlines()
    ]


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def data(ave_cache) -> Path:
    return ave_cache


@pytest.fixture(scope="module")
def fewshot(fewshot_files, fewshot_ave) -> tuple[list[str], Path]:
    """Overrides for the tiny CLIP/CLAP/RoBERTa files, and a synthetic AVE cache at their 32 px."""
    return tiny_overrides(fewshot_files), fewshot_ave


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "run"
    trainer(data, out).run()
    return out


# -- 1. a new run never eats a finished one ----------------------------------------------------------


@pytest.mark.slow
def test_a_new_run_on_a_run_folder_is_refused_and_overwrite_moves_the_old_run_aside(
    data, reference, tmp_path
):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    before = files_of(run)
    result = invoke("train", "--recipe", "ave-tiny", "--data", data, "--output", run, *BASE, "train.lr=0.5")
    assert_one_line_error(result, str(run), "--resume", "--overwrite")
    assert files_of(run) == before  # nothing deleted, nothing written
    result = invoke(
        "--quiet", "train", "--recipe", "ave-tiny", "--data", data, "--output", run, "--overwrite",
        *BASE, "train.epochs=1", "train.lr=0.5",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"{run / 'previous-1'}" in result.stderr  # it says where the old run went
    assert files_of(run / "previous-1") == before  # the old run, whole
    assert [m["epoch"] for m in metric_lines(run)] == [1]
    assert "lr: 0.5" in (run / "recipe.yaml").read_text()
    # A third run moves the second aside next to the first.
    result = invoke(
        "--quiet", "train", "--recipe", "ave-tiny", "--data", data, "--output", run, "--overwrite",
        *BASE, "train.epochs=1",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert files_of(run / "previous-1") == before
    assert (run / "previous-2" / "best.safetensors").is_file()


def test_overwrite_and_resume_together_are_refused(tmp_path):
    result = invoke("train", "--output", tmp_path / "r", "--resume", "--overwrite")
    assert_one_line_error(result, "--overwrite", "--resume")


def test_a_folder_without_a_run_is_used_as_it_is(data, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    trainer(data, run, "train.epochs=1").run()
    assert (run / "notes.txt").read_text() == "mine" and not (run / "previous-1").exists()


# -- 6. each epoch is logged once; 8. a full disk is one line naming the file ------------------------


@pytest.mark.slow
def test_a_kill_right_after_validation_then_resume_logs_each_epoch_once(data, reference, tmp_path):
    run = tmp_path / "run"
    # Commits: 1 = epoch 1 trained, 2 = epoch 1 validated (its metrics line is written before).
    with pytest.raises(SystemExit):
        trainer(data, run, test_kill_before_commit=2).run()
    assert [m["epoch"] for m in metric_lines(run)] == [1]
    trainer(data, run).run(resume=True)
    assert [m["epoch"] for m in metric_lines(run)] == [1, 2]
    assert metric_lines(run) == metric_lines(reference)


def _full_disk_at(monkeypatch, call: int):
    """safetensors' writer fails with a full disk at its ``call``-th use (a SafetensorError, which
    is not an OSError)."""
    import safetensors.torch
    from safetensors import SafetensorError

    real, calls = safetensors.torch.save_file, {"n": 0}

    def save_file(tensors, filename, metadata=None):
        calls["n"] += 1
        if calls["n"] == call:
            raise SafetensorError(
                'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
            )
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)


@pytest.mark.slow
def test_a_full_disk_while_training_is_one_line_naming_the_file_and_the_run_resumes(
    data, reference, tmp_path, monkeypatch
):
    run = tmp_path / "run"
    # Writes: 1 = commit 1 (epoch 1 trained), 2 = best.safetensors, 3 = commit 2 (epoch 1 validated).
    _full_disk_at(monkeypatch, 3)
    result = invoke("train", "--recipe", "ave-tiny", "--data", data, "--output", run, *BASE)
    weights = run / STATE_DIR / "weights-000002.safetensors"
    assert ".tmp-" not in assert_error_ends_the_output(result, f"{weights}: no space left")
    monkeypatch.undo()
    assert not list(run.rglob(".tmp-*"))
    result = invoke("--quiet", "train", "--output", run, "--resume")
    assert result.exit_code == 0, result.output
    assert metric_lines(run) == metric_lines(reference)  # epoch 1 once, then epoch 2
    assert same_weights(run / "last.safetensors", reference / "last.safetensors")


def test_a_full_disk_in_a_plain_write_names_the_file(tmp_path, monkeypatch):
    import builtins

    from dgsct_cli.atomic import atomic_write_bytes
    from dgsct_cli.cli.common import _user_error

    real_open = builtins.open

    class Full:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.fh.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")  # what write() raises: no file name

        def __getattr__(self, name):
            return getattr(self.fh, name)

    monkeypatch.setattr(builtins, "open", lambda *a, **k: Full(real_open(*a, **k)))
    target = tmp_path / "m.json"
    with pytest.raises(OSError) as info:
        atomic_write_bytes(target, b"{}")
    monkeypatch.undo()
    message = _user_error(info.value)
    assert message.startswith(f"{target}: no space left"), message
    assert not list(tmp_path.iterdir())


# -- 7. an interrupted few-shot run is finished by the command its message names --------------------


def _interrupt_first_run_after(monkeypatch, batches: int) -> None:
    """The next Trainer built stops (as by Ctrl-C) after ``batches`` micro-batches."""
    real = Trainer.__init__
    armed = {"on": True}

    def init(self, *args, **kwargs):
        real(self, *args, **kwargs)
        if armed.pop("on", False):
            self.interrupt_after_batches = batches

    monkeypatch.setattr(Trainer, "__init__", init)


def _named_command(stderr: str) -> list[str]:
    import re
    import shlex

    found = re.findall(r"continue with '(dgsct [^']+)'", stderr)
    assert found, stderr
    return shlex.split(found[-1])[1:]


@pytest.mark.slow
def test_an_interrupted_fewshot_run_is_finished_by_the_command_it_names(fewshot, tmp_path, monkeypatch):
    run = tmp_path / "K1"
    _interrupt_first_run_after(monkeypatch, 1)
    result = invoke(
        "fewshot", "train", "--recipe", "fewshot-ave-cls", "--shots", "1", "--data", fewshot[1],
        "--output", run, *fewshot[0], "train.epochs=2", "train.batch_size=2",
    )  # fmt: skip
    assert result.exit_code == 130, result.output
    assert not (run / "fewshot.json").exists()
    command = _named_command(result.stderr)
    assert command[:2] == ["fewshot", "train"]
    result = invoke("--quiet", *command)
    assert result.exit_code == 0, result.output
    summary = json.loads((run / "fewshot.json").read_text())
    assert summary["shots"] == 1 and summary["epochs"] == 2 and summary["test_accuracy"] is not None
    assert summary["train_samples"] == 4
    assert [m["epoch"] for m in metric_lines(run)] == [1, 2]


@pytest.mark.slow
def test_an_interrupted_fewshot_sweep_is_finished_by_the_command_it_names(fewshot, tmp_path, monkeypatch):
    out = tmp_path / "sweep"
    common = [*fewshot[0], "train.epochs=1", "train.batch_size=2"]
    args = ["fewshot", "sweep", "--recipe", "fewshot-ave-cls", "--shots", "1,2", "--data", fewshot[1]]
    real = Trainer.__init__
    built = {"n": 0}

    def init(self, *a, **k):  # the second K's run stops after a batch
        real(self, *a, **k)
        built["n"] += 1
        if built["n"] == 2:
            self.interrupt_after_batches = 1

    monkeypatch.setattr(Trainer, "__init__", init)
    result = invoke(*args, "--output", out, *common)
    assert result.exit_code == 130, result.output
    monkeypatch.undo()
    assert (out / "K1" / "fewshot.json").is_file() and not (out / "K2" / "fewshot.json").exists()
    command = _named_command(result.stderr)
    assert command[:2] == ["fewshot", "sweep"]
    k1 = (out / "K1" / "fewshot.json").read_bytes()
    result = invoke("--quiet", *command)
    assert result.exit_code == 0, result.output
    table = json.loads((out / "sweep.json").read_text())
    assert [r["shots"] for r in table["runs"]] == [1, 2] and all(
        r["accuracy"] is not None for r in table["runs"]
    )
    assert (out / "K1" / "fewshot.json").read_bytes() == k1  # the finished K was kept
    assert (out / "sweep.png").is_file()
    # A new sweep over the same folder refuses the K folders that hold runs.
    assert_error_ends_the_output(invoke(*args, "--output", out, *common), str(out / "K1"), "--overwrite")


# -- 3. the checksum covers the metadata ---------------------------------------------------------------


def _rewrite_metadata(source: Path, target: Path, edit) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(source), framework="pt") as f:
        meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(target), metadata=edit(meta))


def _edit_recipe(meta: dict) -> dict:
    recipe = json.loads(meta["recipe"])
    recipe["model"]["adapter"]["gamma"] = 0.95
    return {**meta, "recipe": json.dumps(recipe)}


def _reverse_classes(meta: dict) -> dict:
    info = json.loads(meta["data"])
    info["class_names"] = info["class_names"][::-1]
    return {**meta, "data": json.dumps(info)}


@pytest.mark.parametrize("edit", [_edit_recipe, _reverse_classes], ids=["recipe", "class-names"])
def test_edited_checkpoint_metadata_is_refused(data, reference, tmp_path, edit):
    from dgsct_cli.checkpoint import read_metadata
    from dgsct_cli.models.weights import CheckpointError

    bad = tmp_path / "edited.safetensors"
    _rewrite_metadata(reference / "best.safetensors", bad, edit)
    with pytest.raises(CheckpointError, match="metadata"):
        read_metadata(bad)
    result = invoke("eval", "--checkpoint", bad, "--data", data, "--split", "val")
    assert_one_line_error(result, str(bad), "damaged checkpoint")
    result = invoke("predict", "--checkpoint", bad, data / "nothing.mp4")
    assert_one_line_error(result, str(bad), "damaged checkpoint")


def test_a_checkpoint_of_the_older_format_loads_with_a_warning(data, reference, tmp_path, caplog):
    from dgsct_cli.checkpoint import load_checkpoint

    old = tmp_path / "old.safetensors"

    def older(meta: dict) -> dict:
        return {k: v for k, v in meta.items() if k != "metadata_sha256"} | {"format": "dgsct-checkpoint-1"}

    _rewrite_metadata(reference / "best.safetensors", old, older)
    with caplog.at_level("WARNING", logger="dgsct_cli.checkpoint"):
        model, recipe, _ = load_checkpoint(old)
    assert any("older dgsct" in r.getMessage() and str(old) in r.getMessage() for r in caplog.records)
    assert recipe.task == "ave"


# -- 4. delta checkpoints check the encoder files they are rebuilt from --------------------------------


@pytest.mark.slow
def test_a_changed_encoder_file_is_refused_naming_it_unless_accepted(fewshot, tmp_path):
    files = write_tiny_files(tmp_path / "weights")  # this test's own files: it replaces one
    run, data = tmp_path / "run", fewshot[1]
    result = invoke(
        "--quiet", "train", "--recipe", "fewshot-ave-cls", "--data", data, "--output", run,
        *tiny_overrides(files), "data.shots=1", "train.epochs=1", "train.batch_size=2",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    recorded = json.loads(load_metadata(run / "best.safetensors")["encoder_files"])
    assert set(recorded) == {"model.visual.weights", "model.audio.weights", "model.text.tokenizer"}
    evaluate = ["eval", "--checkpoint", run, "--data", data, "--split", "val"]
    assert invoke("--quiet", *evaluate).exit_code == 0  # the same files: accepted
    shutil.copy(write_tiny_files(tmp_path / "other", seed=1)["clap"], files["clap"])
    assert_one_line_error(
        invoke(*evaluate), str(run / "best.safetensors"), f"model.audio.weights {files['clap']}",
        "not the file it was trained with", "--accept-changed-encoders",
    )  # fmt: skip
    result = invoke(*evaluate, "--accept-changed-encoders")
    assert result.exit_code == 0, result.output
    assert "warning:" in result.stderr and str(files["clap"]) in result.stderr
    # Continuing the run on the changed file is refused as well.
    result = invoke("train", "--output", run, "--resume", "train.epochs=2")
    assert_error_ends_the_output(result, f"model.audio.weights {files['clap']}", "--accept-changed-encoders")


def load_metadata(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata()


def test_encoder_file_fingerprints_tell_files_apart(tmp_path):
    from dgsct_cli.encoder_files import file_fingerprint

    big = tmp_path / "big.bin"
    raw = bytearray(torch.randn(4_000_000).numpy().tobytes())  # 16 MB: sampled
    big.write_bytes(raw)
    before = file_fingerprint(big)
    raw[-1] ^= 1  # inside the last block, which is always read
    big.write_bytes(raw)
    assert file_fingerprint(big) != before and file_fingerprint(big)["size"] == before["size"]
    small = tmp_path / "small.bin"
    small.write_bytes(b"x" * 1000)
    folder = tmp_path / "tok"
    folder.mkdir()
    (folder / "vocab.json").write_text("{}")
    assert file_fingerprint(small)["size"] == 1000 and file_fingerprint(folder)["size"] == 2


# -- 2. few-shot validation sees the current prompts -----------------------------------------------------


def test_text_features_follow_a_fused_adam_step(fewshot):
    """The fused Adam step changes the prompt context in place without bumping its version counter:
    the cached text features must not outlive it."""
    from dgsct_cli.factory import build_model, data_info
    from dgsct_cli.train import make_optimizer

    recipe = load_recipe("fewshot-ave", [*fewshot[0], "train.lr=0.5"])
    torch.manual_seed(0)
    model = build_model(recipe, data_info(recipe, fewshot[1])).eval()
    frames, audio = torch.randn(2, 10, 3, 32, 32), torch.randn(2, 10, 64000) * 0.1
    with torch.no_grad():
        before = model(frames=frames, audio=audio)["event_logits"]  # fills the cache
    optimizer = make_optimizer(model, recipe.train)
    assert optimizer.defaults.get("fused")
    model.train()
    out = model(frames=frames, audio=audio)
    out["event_logits"].sum().backward()
    optimizer.step()
    model.eval()
    with torch.no_grad():
        cached = model(frames=frames, audio=audio)["event_logits"]
        model.head._text_cache.clear()
        fresh = model(frames=frames, audio=audio)["event_logits"]
    assert not torch.equal(before, fresh)  # the step changed the model
    torch.testing.assert_close(cached, fresh, rtol=0, atol=0)


FEWSHOT_TINY = "fewshot"  # marks recipes that run on the tiny CLIP/CLAP/RoBERTa files
# Small synthetic sets: the point is that two evaluations of the same weights agree, which any
# non-empty validation split shows (the recipes' own sizes are for learning).
TASK_RECIPES = [
    ("ave-tiny", ["data.synthetic_videos=6"]),
    ("avvp-tiny", ["data.synthetic_videos=6"]),
    ("avqa-grounding-tiny", ["data.synthetic_videos=12"]),
    ("avqa-tiny", ["train.init_from=null", "data.synthetic_videos=12"]),
    ("avs-s4-tiny", ["data.synthetic_videos=6"]),
    ("avs-ms3-tiny", ["data.synthetic_videos=6"]),
    ("fewshot-ave", [FEWSHOT_TINY, "data.synthetic_videos=6"]),
    ("fewshot-ave-cls", [FEWSHOT_TINY, "data.synthetic_videos=6"]),
    ("fewshot-llp-cls", [FEWSHOT_TINY, "data.synthetic_videos=6"]),
    ("pretrain-vggsound40k", [FEWSHOT_TINY]),
]


@pytest.mark.slow
@pytest.mark.parametrize("name, extra", TASK_RECIPES, ids=[name for name, _ in TASK_RECIPES])
def test_validation_during_training_equals_a_fresh_eval_of_the_same_weights(name, extra, fewshot, tmp_path):
    from dgsct_cli.evaluate import evaluate
    from dgsct_cli.factory import open_checkpoint_split

    if FEWSHOT_TINY in extra:
        extra = [*fewshot[0], "train.lr=0.05", *extra[1:]]  # a large step: stale prompts would show
    overrides = ["data.num_workers=0", "train.epochs=2", "train.max_steps_per_epoch=2", *extra]
    recipe = load_recipe(name, overrides)
    run, data = tmp_path / "run", tmp_path / "data"
    Trainer(recipe, data, run, console=Console(quiet=True), show_progress=False, synthetic=True).run()
    logged = json.loads((run / "last.json").read_text())
    assert logged["epoch"] == 2
    split = recipe.data.val_split
    model, r, _, task, dataset, device = open_checkpoint_split(run / "last.safetensors", data, split)
    fresh = evaluate(model, dataset, task, device, r.train.eval_batch_size, 0, r.train.precision, None, False)
    scalars = {k: v for k, v in fresh.items() if isinstance(v, int | float)}
    assert scalars and {k: logged["val"][k] for k in scalars} == pytest.approx(scalars, abs=1e-6)


# -- 5. unchecked settings get one line ------------------------------------------------------------------


def test_an_empty_recipe_or_one_without_a_task_is_refused(tmp_path):
    from dgsct_cli.config import RecipeError

    empty, taskless = tmp_path / "empty.yaml", tmp_path / "taskless.yaml"
    empty.write_text("# nothing yet\n")
    taskless.write_text("train: {epochs: 2}\n")
    with pytest.raises(RecipeError, match="empty"):
        load_recipe(str(empty))
    with pytest.raises(RecipeError, match="task"):
        load_recipe(str(taskless))
    assert load_recipe(str(taskless), ["task=ave"]).train.epochs == 2
    assert_one_line_error(invoke("recipes", "show", empty), str(empty), "empty")


@pytest.mark.parametrize(
    "override, fragments",
    [
        ("model.audio.num_heads=[2,3,8,16]", ["model.audio", "num_heads[1] = 3", "64"]),
        ("model.text.roberta.hiden_size=32", ["model.text.roberta", "hiden_size", "hidden_size"]),
        ("model.text.roberta.num_attention_heads=5", ["model.text.roberta", "num_attention_heads"]),
    ],
)
def test_settings_the_model_would_ignore_or_bend_are_refused(override, fragments):
    from dgsct_cli.config import RecipeError

    recipe = "fewshot-ave" if override.startswith("model.text") else "ave-tiny"
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe, [override])
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)


@pytest.mark.parametrize(
    "override, fragments",
    [
        ("model.visual.args.foo=1", ["model.visual.args.foo", "embed_dim"]),
        ("model.visual.args.embed_dim=-16", ["model.visual.args.embed_dim", "-16"]),
        ("model.visual.name=no_such_model", ["model.visual.name", "no_such_model"]),
        ("model.visual.args.num_heads=[2,4,8,5]", ["model.visual.args.num_heads", "5"]),
    ],
)
def test_timm_settings_are_checked_naming_the_key(override, fragments, tmp_path):
    result = invoke("info", "--recipe", "ave-tiny", override)
    line = assert_one_line_error(result, *fragments)
    assert "Traceback" not in line


def test_more_shots_than_a_class_has_is_a_warning(fewshot, caplog):
    from dgsct_cli.factory import open_split

    recipe = load_recipe("fewshot-ave-cls", [*fewshot[0], "data.shots=10000"])
    with caplog.at_level("WARNING"):
        dataset = open_split(recipe, fewshot[1], "train")
    warnings = [r.getMessage() for r in caplog.records if "data.shots=10000" in r.getMessage()]
    assert len(warnings) == 1 and f"{len(dataset)} samples" in warnings[0], caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        open_split(load_recipe("fewshot-ave-cls", [*fewshot[0], "data.shots=1"]), fewshot[1], "train")
    assert not [r for r in caplog.records if "data.shots" in r.getMessage()]


def test_eval_with_a_recipe_of_another_task_is_refused(data, reference):
    result = invoke(
        "eval", "--checkpoint", reference, "--data", data, "--split", "val", "--recipe", "avvp-tiny"
    )
    assert_one_line_error(result, "--recipe", "avvp", "ave")


# -- 5, 11. AVSBench PNGs: an alpha-only mask, an odd-sized frame, a decompression bomb ------------------


def _ms3_rows(root: Path):
    from dgsct_cli.data.avsbench import get_setting, read_meta, setting_root

    spec = get_setting("ms3")
    base = setting_root(root, spec)
    rows = [r for r in read_meta(base / spec.csv, spec) if r.split == "train"]
    return spec, base / spec.data, rows


def test_avs_pngs_an_alpha_mask_an_odd_frame_and_a_huge_png_are_reported(tmp_path, caplog):
    from PIL import Image

    from dgsct_cli.data.avsbench import prepare_avsbench, write_synthetic_avsbench

    root = write_synthetic_avsbench(tmp_path / "raw", "ms3", num_videos=8)
    spec, data, rows = _ms3_rows(root)
    alpha, odd, huge = rows[0], rows[1], rows[2]
    # A mask whose object is only in its alpha channel (the colour channels are black).
    mask_path = spec.mask_path(data, alpha, 1)
    grey = np.asarray(Image.open(mask_path).convert("L"))
    assert grey.any()
    rgba = np.zeros((*grey.shape, 4), dtype=np.uint8)
    rgba[..., 3] = grey
    Image.fromarray(rgba, mode="RGBA").save(mask_path)
    # A frame of another size and shape (AVSBench's are 224 x 224).
    frame_path = spec.frame_path(data, odd, 2)
    Image.open(frame_path).resize((300, 200)).save(frame_path)
    # A PNG above PIL's decompression-bomb limit (small on disk: one colour).
    Image.new("1", (14000, 13000)).save(spec.frame_path(data, huge, 1))
    with caplog.at_level("WARNING"):
        summary = prepare_avsbench(root, tmp_path / "cache", "ms3", progress=False)
    reasons = {s.video_id: s.reason for s in summary.skipped}
    assert set(reasons) == {alpha.name, huge.name}, reasons
    assert "alpha" in reasons[alpha.name] and mask_path.name in reasons[alpha.name]
    assert "pixels" in reasons[huge.name] and f"{huge.name}.mp4_1.png" in reasons[huge.name]
    resized = [r.getMessage() for r in caplog.records if "224" in r.getMessage()]
    assert len(resized) == 1 and odd.name in resized[0] and "300x200" in resized[0], caplog.text
    assert "300x200" in summary.details.get("PNGs resized", "")


# -- 10. a damaged cache file: the video and the file, in one short line -----------------------------------


@pytest.mark.parametrize("workers", [0, 2])
def test_a_damaged_cache_file_is_one_short_line_naming_the_video_and_file(data, tmp_path, workers):
    cache = tmp_path / "C"
    shutil.copytree(data, cache)
    video = json.loads((cache / "manifest.json").read_text())["samples"][0]["video_id"]
    damaged = cache / "frames" / f"{video}.npy"
    damaged.write_bytes(damaged.read_bytes()[:300])  # cut short, as by a full disk or a copy
    result = invoke(
        "--quiet", "train", "--recipe", "ave-tiny", "--data", cache, "--output", tmp_path / "run", *BASE,
        "train.epochs=1", f"data.num_workers={workers}",
    )  # fmt: skip
    line = assert_error_ends_the_output(result, video, str(damaged), "damaged")
    assert len(line) < 400 and "Traceback" not in line and "File " not in line, line


def test_a_cache_file_with_pickled_objects_is_refused_without_the_allow_pickle_advice(data, tmp_path):
    from dgsct_cli.data.manifest import PreparedCache

    cache = tmp_path / "C"
    shutil.copytree(data, cache)
    video = json.loads((cache / "manifest.json").read_text())["samples"][0]["video_id"]
    np.save(cache / "audio" / f"{video}.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError) as info:
        PreparedCache(cache).audio(video)
    message = str(info.value)
    assert video in message and "allow_pickle" not in message and "pickled" in message, message


# -- 12. never pass on the advice to load a file with weights_only=False / allow_pickle ----------------


def _pickled_object_file(path: Path) -> Path:
    import argparse

    torch.save({"visual.conv1.weight": torch.zeros(1), "args": argparse.Namespace(lr=1)}, path)
    return path


@pytest.mark.parametrize("reader", ["clip", "r2plus1d"])
def test_weight_readers_do_not_advise_unsafe_loading(reader, tmp_path):
    from dgsct_cli.data.r2plus1d import load_r2plus1d_18
    from dgsct_cli.models.encoders.clip import read_openai_clip

    path = _pickled_object_file(tmp_path / "weights.pt")
    with pytest.raises(ValueError) as info:
        (read_openai_clip if reader == "clip" else load_r2plus1d_18)(path)
    message = str(info.value)
    assert str(path) in message and "pickled objects" in message, message
    assert "weights_only" not in message and "\n" not in message and len(message) < 300, message


# -- 13. the right file, the right key, the exit code the README promises ----------------------------------


def test_an_unknown_class_in_annotations_is_blamed_on_its_line(tmp_path):
    from dgsct_cli.data.ave import prepare_ave
    from dgsct_cli.data.synthetic import write_synthetic_ave

    root = write_synthetic_ave(tmp_path / "raw", num_videos=6, image_size=32, seconds=4)
    annotations = root / "Annotations.txt"
    lines = annotations.read_text().splitlines()
    video = lines[1].split("&")[1]
    annotations.write_text("\n".join([*lines, f"Banjo&{video}&good&0&4"]) + "\n")
    where = f"{annotations}:{len(lines) + 1}:"
    summary = prepare_ave(root, tmp_path / "C", workers=1, image_size=32, progress=False)
    assert [m for m in summary.bad_lines if "Banjo" in m] == [
        f"{where} unknown category 'Banjo' (not in {root / 'categories.txt'})"
    ]
    result = invoke("prepare", "ave", "--root", root, "--out", tmp_path / "D", "--strict", "--workers", "1")
    line = assert_one_line_error(result, where, "Banjo")
    assert not line.startswith(f"error: {root / 'categories.txt'}")
    # A class categories.txt lists but no annotation line has is categories.txt's fault.
    annotations.write_text("\n".join(lines) + "\n")
    (root / "categories.txt").write_text((root / "categories.txt").read_text() + "Banjo\n")
    result = invoke("prepare", "ave", "--root", root, "--out", tmp_path / "E", "--workers", "1")
    assert_one_line_error(result, str(root / "categories.txt"), "Banjo")


def test_usage_errors_exit_with_the_code_the_readme_gives():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text().lower()
    assert "usage errors" in readme and "exit code 2" in readme
    for args in (["train", "--no-such-option"], ["eval"], ["predict", "--checkpoint"]):
        result = invoke(*args)
        assert result.exit_code == 2, (args, result.output)


def test_convert_names_the_release_key_a_file_lacks(tmp_path):
    """A release file without one key: the message names that key as the file spells it (not ours,
    whose stage numbers differ, and not keys the file has)."""
    from dgsct_cli.convert import release_key
    from dgsct_cli.factory import build_model

    model = build_model(load_recipe("avs-s4-tiny"), load_encoder_weights=False)
    state = {release_key(k): v for k, v in model.state_dict().items()}
    assert "swin.layers.0.downsample.reduction.weight" in state  # the release merges at a stage's end
    assert "htsat.layers.0.downsample.reduction.weight" in state
    torch.save(state, tmp_path / "whole.pth")
    result = invoke("--quiet", "convert", "avs-s4", tmp_path / "whole.pth", "--out", tmp_path / "ok.safetensors",
                    "--recipe", "avs-s4-tiny")  # fmt: skip
    assert result.exit_code == 0, result.output  # the inverse names are the release's
    for lacking in ("swin.layers.0.downsample.reduction.weight", "htsat.layers.1.downsample.norm.weight"):
        torch.save({k: v for k, v in state.items() if k != lacking}, tmp_path / "part.pth")
        result = invoke("convert", "avs-s4", tmp_path / "part.pth", "--out", tmp_path / "x.safetensors",
                        "--recipe", "avs-s4-tiny")  # fmt: skip
        line = assert_one_line_error(result, "1 missing key(s)", lacking)
        assert "unexpected" not in line, line


def test_a_full_disk_while_writing_a_synthetic_dataset_names_the_folder(tmp_path, monkeypatch):
    from pathlib import Path as P

    def full(self, data, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")  # as write() raises it: no file name

    monkeypatch.setattr(P, "write_text", full)
    result = invoke("prepare", "ave", "--synthetic", "--videos", "3", "--out", tmp_path / "C")
    assert_one_line_error(result, str(tmp_path / "C" / "raw"), "no space left")
