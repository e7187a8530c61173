"""decord (the decord2 build) reads the frames and audio that FFmpeg decodes, at every frame width.

PyAV (the same FFmpeg, an independent reader) is the reference: decord2 returns rows padded to
FFmpeg's alignment for some widths (96, 144, ...), which ``read_frames`` crops.
"""

from __future__ import annotations

import numpy as np
import pytest

from dgsct_cli.data.video import decode_clip_sizes, read_frames, write_mp4


def _pyav_frames(path) -> np.ndarray:
    import av

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def _pyav_mono(path) -> tuple[np.ndarray, int]:
    import av

    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        wave = np.concatenate([f.to_ndarray() for f in container.decode(stream)], axis=1)
        return wave.mean(0).astype(np.float32), stream.rate


# 96 and 144 are widths where decord2 returns padded rows; 48 also breaks decord 0.6.0.
@pytest.mark.parametrize("width", [48, 96, 144, 160, 192, 426])
def test_read_frames_equals_ffmpeg_decode_at_any_width(tmp_path, width):
    import decord

    rng = np.random.default_rng(width)
    frames = rng.integers(0, 255, (12, 64, width, 3), dtype=np.uint8)
    path = tmp_path / f"w{width}.mp4"
    write_mp4(path, frames, fps=4)
    reader = decord.VideoReader(str(path), num_threads=1)
    indices = [11, 0, 5, 5]
    got = read_frames(reader, indices)
    assert got.shape == (4, 64, width, 3) and got.dtype == np.uint8
    assert np.array_equal(got, _pyav_frames(path)[indices])


def test_decode_of_a_96_pixel_clip_has_its_frames_and_audio(tmp_path):
    """The synthetic datasets' 96-px clips: frames by the second-centre rule, audio as FFmpeg's."""
    t = np.arange(3 * 32000) / 32000
    wave = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    frames = np.random.default_rng(0).integers(0, 255, (24, 96, 96, 3), dtype=np.uint8)
    path = tmp_path / "clip.mp4"
    write_mp4(path, frames, fps=8, audio=wave)
    (decoded,), audio = decode_clip_sizes(path, (96,), num_segments=3)
    reference = _pyav_frames(path)
    assert np.array_equal(decoded, reference[[4, 12, 20]])  # the frame nearest each second's middle
    ffmpeg_wave, rate = _pyav_mono(path)
    assert rate == 32000
    assert audio.shape == (3 * 32000,)
    n = min(len(ffmpeg_wave), audio.shape[0])
    np.testing.assert_allclose(audio[:n], ffmpeg_wave[:n], atol=1e-6)
