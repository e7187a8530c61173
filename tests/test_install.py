"""A fresh install works: every dependency imports beside the others, the pinned torch/torchaudio
pair is the one installed, the audio front end runs, the device rule, ``dgsct env``, and (slow,
needs PyPI) the dependency set resolves to wheels on the platforms researchers use."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _requirements() -> list[str]:
    """The installed dgsct's run-time requirements (pyproject.toml's ``dependencies``)."""
    from importlib.metadata import requires

    return [r for r in requires("dgsct") or [] if "extra ==" not in r]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[\s]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_every_dependency_is_known_to_dgsct_env():
    from dgsct_cli.environment import DEPENDENCIES

    declared = {_name(r) for r in _requirements()}
    known = {d.lower().replace("_", "-") for d, _ in DEPENDENCIES}
    assert declared == known


def test_every_dependency_imports_in_a_fresh_process():
    """One process importing them all, in the order a command does (a torch/torchaudio pair that
    does not load fails here, not for a user)."""
    from dgsct_cli.environment import DEPENDENCIES

    modules = [m for _, m in DEPENDENCIES]
    code = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\nprint('ok')"
    result = subprocess.run(
        [sys.executable, "-c", code, *modules], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_installed_versions_satisfy_the_pins_and_ranges():
    from importlib.metadata import version

    from packaging.requirements import Requirement

    for text in _requirements():
        req = Requirement(text)
        installed = version(req.name)
        assert req.specifier.contains(installed, prereleases=True), (
            f"{req.name} {installed} is not {req.specifier}"
        )


def test_torch_and_torchaudio_are_pinned_exactly_and_the_readme_pins_the_same_pair():
    pins = {}
    for text in _requirements():
        m = re.fullmatch(r"(torch|torchaudio)==([0-9.]+)", text)
        if m:
            pins[m.group(1)] = m.group(2)
    assert set(pins) == {"torch", "torchaudio"}
    readme = (REPO / "README.md").read_text()
    for name, ver in pins.items():
        assert f'"{name}=={ver}"' in readme, f"the README's CPU-build command does not pin {name}=={ver}"
    # Nowhere in the README a looser pin of the pair.
    assert not re.search(r"torch(audio)?==2\.\d+\.\*", readme)


def test_audio_front_end_runs_and_matches_a_plain_dft():
    """torchaudio's STFT + mel (the HTS-AT front end) against the convolution-kernel STFT, which
    does not go through torchaudio's spectrogram."""
    import torch

    from dgsct_cli.models.encoders.htsat import HTSATConfig, KernelLogMel, KernelSpectrogram, LogMelFrontEnd

    cfg = HTSATConfig()
    t = torch.arange(32000) / 32000
    wave = (0.3 * torch.sin(2 * torch.pi * 440 * t) + 0.1 * torch.sin(2 * torch.pi * 3000 * t))[None]
    ours = LogMelFrontEnd(cfg)(wave)
    assert ours.shape == (1, 1, 101, cfg.mel_bins) and torch.isfinite(ours).all()
    plain = KernelLogMel(cfg)(KernelSpectrogram(cfg.n_fft, cfg.hop_length)(wave))
    # fp32 convolution sums vs an FFT: within 0.1 dB (a wrong window, hop or scale is off by dBs).
    torch.testing.assert_close(ours, plain, atol=0.1, rtol=1e-3)


def test_device_rule_prefers_cuda_then_mps_then_cpu():
    from dgsct_cli.runtime import pick_device

    assert pick_device("auto", True, True) == "cuda"
    assert pick_device("auto", False, True) == "mps"
    assert pick_device("auto", False, False) == "cpu"
    assert pick_device("cpu", True, True) == "cpu"
    assert pick_device("mps", False, True) == "mps"
    with pytest.raises(ValueError, match="no usable MPS"):
        pick_device("mps", True, False)
    with pytest.raises(ValueError, match="no CUDA"):
        pick_device("cuda", False, True)
    with pytest.raises(ValueError, match="must be one of"):
        pick_device("tpu", False, False)


def test_precision_is_fp32_on_mps_and_cpu():
    import torch

    from dgsct_cli.runtime import resolve_precision

    assert resolve_precision(torch.device("mps"), "auto") == "fp32"
    assert resolve_precision(torch.device("cpu"), "auto") == "fp32"
    assert resolve_precision(torch.device("cuda"), "auto") == "bf16"


def test_recipes_accept_mps_and_reject_other_devices():
    from dgsct_cli.config import load_recipe

    assert load_recipe("ave-tiny", ["train.device=mps"]).train.device == "mps"
    with pytest.raises(ValueError, match="train.device"):
        load_recipe("ave-tiny", ["train.device=tpu"])


def test_dgsct_env_reports_versions_devices_and_readers():
    exe = shutil.which("dgsct") or pytest.skip("dgsct is not on PATH")
    result = subprocess.run([exe, "env", "--json"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    for key in ("dgsct", "python", "platform", "cpu_count", "packages", "accelerators", "readers"):
        assert key in report
    for name in ("torch", "torchaudio", "timm", "decord2", "open_clip_torch", "transformers"):
        assert report["packages"][name]["imports"] and report["packages"][name]["version"]
    assert report["pins"]["torch"] == report["packages"]["torch"]["version"]
    assert report["accelerators"]["auto_device"] in ("cuda", "mps", "cpu")
    assert "cuda_available" in report["accelerators"] and "mps_available" in report["accelerators"]
    assert report["readers"]["PNG/JPEG frames and masks (Pillow)"]["imports"]
    # The table is the same command's other rendering: run in this process (the console script and
    # a fresh interpreter's imports are checked above), which saves a second start of every library.
    from conftest import invoke

    table = invoke("env")
    assert table.exit_code == 0 and "torchaudio" in table.stdout and "MPS" in table.stdout


def test_a_library_that_does_not_load_is_named_with_the_tested_pair():
    from dgsct_cli.cli.common import _user_error

    exc = OSError(
        "Could not load this library: /v/lib/python3.11/site-packages/torchaudio/lib/libtorchaudio.so "
        "(ctypes: undefined symbol: torch_exception_get_what_without_backtrace)"
    )
    message = _user_error(exc)
    assert message.startswith("libtorchaudio.so could not be loaded (undefined symbol: torch_exception")
    assert "torch==2.11.0" in message and "torchaudio==2.11.0" in message and "dgsct env" in message
    assert "a file" not in message


# -- resolution to wheels on other platforms (network: PyPI) --------------------------------------

# uv resolves for a target platform, evaluating environment markers for it (pip's --platform does
# not: it would ask for torch's Linux-only CUDA packages on macOS). Each target accepts every older
# tag too (x86_64-manylinux_2_28 takes manylinux_2_17 ... 2_28 wheels).
PLATFORMS = {
    "linux-x86_64": ("x86_64-manylinux_2_28", {}),
    "linux-aarch64": ("aarch64-manylinux_2_28", {}),
    # decord2's only macOS wheel is for macOS 14 (Sonoma) on arm64: the README says so.
    "macos-arm64": ("aarch64-apple-darwin", {"MACOSX_DEPLOYMENT_TARGET": "14.0"}),
}


@pytest.mark.slow
@pytest.mark.parametrize("python", ["3.11", "3.12"])
@pytest.mark.parametrize("target", sorted(PLATFORMS))
def test_dependency_set_resolves_to_wheels(tmp_path, target, python):
    uv = shutil.which("uv") or str(Path(sys.executable).with_name("uv"))
    if not Path(uv).exists():
        pytest.fail("uv is not installed (it is in the test extras: pip install -e '.[test]')")
    platform_name, env = PLATFORMS[target]
    out = tmp_path / "requirements.txt"
    cmd = [uv, "pip", "compile", str(REPO / "pyproject.toml"), "--extra", "test", "--only-binary", ":all:"]
    cmd += ["--python-platform", platform_name, "--python-version", python, "--no-header", "-o", str(out)]
    cmd += ["--quiet", "--cache-dir", str(tmp_path / "uv-cache")]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, **env})
    assert result.returncode == 0, f"{target} / Python {python}: {result.stderr[-3000:]}"
    resolved = dict(
        line.split("==", 1)
        for line in out.read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    pins = {m.group(1): m.group(2) for t in _requirements() if (m := re.fullmatch(r"(\S+)==(\S+)", t))}
    for name, ver in pins.items():
        assert resolved.get(name) == ver, f"{target}: {name} resolved to {resolved.get(name)}, pinned {ver}"
    assert "decord2" in resolved
