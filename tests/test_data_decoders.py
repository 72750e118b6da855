"""Decoders on real files written with PyAV: every backend, H.264 mp4 and VP9 webm, same frames for same indices."""

import time

import numpy as np
import pytest

from videoconvmae.data.synth import encode_video
from videoconvmae.data.video import (
    BACKENDS,
    DecodeTimeout,
    UnreadableError,
    open_video,
    read_clip,
    start_decode,
)


def _ramp_clip(t: int = 12, h: int = 32, w: int = 64) -> np.ndarray:
    """Frames whose content identifies the frame number (a bright bar moves 3 px per frame).

    Width 64: decord 0.6.0 fails on some widths (16, 24, 48, 72 px: "DECORDArrayCopyFromTo: The size must
    exactly match"); such files are skipped as decode_error by the datasets.
    """
    frames = np.full((t, h, w, 3), 40, np.uint8)
    for i in range(t):
        frames[i, :, 3 * i % w:3 * i % w + 3] = 230
    return frames


def _frame_number(frame: np.ndarray) -> int:
    return int(np.argmax(frame[..., 0].mean(0))) // 3


@pytest.fixture(scope="module")
def ramp_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ramp")
    frames = _ramp_clip()
    paths = {ext: folder / f"ramp.{ext}" for ext in ("mp4", "webm")}
    for path in paths.values():
        encode_video(path, frames, fps=25)
    # variable frame rate: gaps of 1, 3, 1, 2, ... frame durations between presentation timestamps
    vfr = folder / "vfr.mp4"
    encode_video(vfr, frames, fps=25, pts=np.cumsum([0, 100, 300, 100, 200, 100, 400, 100, 100, 300, 100, 200]))
    paths["vfr"] = vfr
    return paths


@pytest.mark.parametrize("container", ["mp4", "webm", "vfr"])
def test_backends_return_identical_frames(ramp_files, container):
    indices = [7, 0, 3, 3, 11, 5]  # unsorted and repeated on purpose
    decoded = {}
    for backend in BACKENDS:
        with open_video(ramp_files[container], backend) as reader:
            assert reader.num_frames == 12, backend
            assert reader.fps > 0, backend
            decoded[backend] = reader.get_frames(indices)
    for backend, frames in decoded.items():
        assert frames.dtype == np.uint8 and frames.shape == (6, 32, 64, 3), backend
        np.testing.assert_array_equal(frames, decoded["decord"], err_msg=f"{backend} != decord on {container}")
    # indices are frame numbers in presentation order, also on the variable-frame-rate file
    assert [_frame_number(f) for f in decoded["pyav"]] == indices


def test_decoded_pixels_match_encoded_content(ramp_files):
    original = _ramp_clip()
    with open_video(ramp_files["mp4"], "decord") as reader:
        frames = reader.get_frames(range(12)).astype(int)
    assert np.abs(frames - original).mean() < 4  # lossy, but the same picture


def test_out_of_range_and_missing(ramp_files, tmp_path):
    with open_video(ramp_files["mp4"], "pyav") as reader, pytest.raises(IndexError, match="outside 0..11"):
        reader.get_frames([12])
    with pytest.raises(FileNotFoundError):
        open_video(tmp_path / "nope.mp4")
    with pytest.raises(ValueError, match="data.decoder"):
        open_video(ramp_files["mp4"], "opencv")


@pytest.mark.parametrize("backend", BACKENDS)
def test_broken_files_raise_unreadable_with_reason(ramp_files, tmp_path, backend):
    data = ramp_files["mp4"].read_bytes()
    (tmp_path / "zero.mp4").write_bytes(b"")
    (tmp_path / "garbage.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 4000, np.uint8).tobytes())
    (tmp_path / "truncated.mp4").write_bytes(data[: len(data) // 2])
    expected = {"zero.mp4": {"empty"}, "garbage.mp4": {"open_error"}, "missing.mp4": {"missing"},
                "truncated.mp4": {"open_error", "decode_error"}}
    for name, reasons in expected.items():
        with pytest.raises(UnreadableError) as err:
            read_clip(str(tmp_path / name), backend, lambda n, fps: list(range(n)), timeout_s=30)
        assert err.value.reason in reasons, (name, err.value)


def test_watchdog_times_out_a_hanging_decode():
    start = time.monotonic()
    with pytest.raises(DecodeTimeout):
        start_decode(lambda: time.sleep(5), timeout_s=0.2)()
    assert time.monotonic() - start < 2
    assert start_decode(lambda: 42, timeout_s=1.0)() == 42  # a fresh thread serves the next decode


def test_read_clip_reports_timeout(ramp_files):
    def slow_choice(n, fps):
        time.sleep(3)
        return [0]

    with pytest.raises(UnreadableError) as err:
        read_clip(str(ramp_files["mp4"]), "decord", slow_choice, timeout_s=0.2)
    assert err.value.reason == "timeout"


def test_an_image_renamed_to_mp4_is_not_a_one_frame_video(tmp_path):
    from PIL import Image

    path = tmp_path / "photo.mp4"
    Image.fromarray(_ramp_clip(1)[0]).save(path, format="JPEG")
    for backend in BACKENDS:
        with pytest.raises(ValueError, match="photo.mp4: a JPEG image, not a video"):
            open_video(path, backend)
    with pytest.raises(UnreadableError) as err:
        read_clip(str(path), "pyav", lambda n, fps: [0], timeout_s=30)
    assert err.value.reason == "open_error" and "JPEG image" in err.value.detail


def test_late_finishers_leave_the_hung_count(monkeypatch):
    import videoconvmae.data.video as video_module

    before = video_module._WATCHDOG.hung  # earlier tests' decodes that may still be sleeping
    monkeypatch.setattr(video_module, "_MAX_HUNG", before + 2)
    for _ in range(5):  # slow decodes that each come back: before, the 3rd ended the process
        with pytest.raises(DecodeTimeout):
            start_decode(lambda: time.sleep(0.3), timeout_s=0.05)()
        time.sleep(0.5)
    assert video_module._WATCHDOG.hung <= before and start_decode(lambda: 7, timeout_s=1.0)() == 7


def test_decodes_hung_at_once_stop_the_process_naming_the_decoder(ramp_files, monkeypatch):
    import videoconvmae.data.video as video_module

    time.sleep(5)  # earlier tests' sleeping decodes come back first
    before = video_module._WATCHDOG.hung
    monkeypatch.setattr(video_module, "_MAX_HUNG", before + 2)

    def stuck(n, fps):
        time.sleep(2)
        return [0]

    for _ in range(2):
        with pytest.raises(UnreadableError, match="timeout"):
            read_clip(str(ramp_files["mp4"]), "pyav", stuck, timeout_s=0.05)
    with pytest.raises(RuntimeError, match=rf"{before + 3} decodes \(data.decoder=pyav\) hung at once"):
        read_clip(str(ramp_files["mp4"]), "pyav", stuck, timeout_s=0.05)
    time.sleep(2.5)  # let them come back: the next tests start from a clean count
    assert video_module._WATCHDOG.hung <= before


def test_a_decode_queued_behind_a_hung_one_is_not_a_timeout():
    from videoconvmae.data.video import start_decode

    hung = start_decode(lambda: time.sleep(1.0), timeout_s=0.2)
    queued = start_decode(lambda: 42, timeout_s=0.2)  # in the same thread's queue
    with pytest.raises(DecodeTimeout):
        hung()
    assert queued() == 42  # moved to the fresh thread (before: stuck behind the hung decode, then a timeout)
    time.sleep(1.0)


def test_data_check_decodes_as_the_preset_does(tmp_path, capsys):
    from videoconvmae.cli import main

    encode_video(tmp_path / "narrow.mp4", _ramp_clip(w=48), fps=25)  # a width decord 0.6.0 cannot copy
    (tmp_path / "list.txt").write_text("narrow.mp4 0\n")
    args = ["data", "check", str(tmp_path / "list.txt"), "--report", str(tmp_path / "r")]
    assert main([*args, f"data.root={tmp_path}"]) == 1  # the schema default, decord
    assert "0 of 1 items readable with data.decoder=decord" in capsys.readouterr().out
    assert main([*args, "pretrain_k400_tiny", f"data.root={tmp_path}"]) == 0  # the preset's pyav: what its run sees
    assert "1 of 1 items readable with data.decoder=pyav" in capsys.readouterr().out
