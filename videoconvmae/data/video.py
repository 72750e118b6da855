"""Video decoders behind one small interface: ``open_video(path, backend) -> VideoReader``.

Backends: decord (default), PyAV, torchcodec. Each decodes with ONE thread (parallelism comes from DataLoader
workers; on this machine a second decoder thread never helped). Frames are addressed by their index in
presentation order, never by timestamp: the same indices give the same frames in every backend, and a
variable-frame-rate file is sampled by frame count (a clip then spans a varying duration in seconds, which is
also what VideoMAE's decord loader does).

``get_frames`` accepts any indices (unsorted, repeated); each backend decodes the sorted unique set once.
Every failure is an ``Exception`` (decord's DECORDError is not a RuntimeError): callers catch ``Exception``.
``start_decode`` runs a decode in a watchdog thread so a hanging decoder cannot stall training.
"""

from __future__ import annotations

import os
import queue
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TypeVar

import numpy as np

from videoconvmae.errors import one_line

BACKENDS = ("decord", "pyav", "torchcodec")


class VideoReader(ABC):
    """An open video: ``num_frames``, ``fps`` and ``get_frames(indices) -> uint8 [T, H, W, 3]``."""

    path: str
    num_frames: int
    fps: float

    def get_frames(self, indices: Sequence[int]) -> np.ndarray:
        """uint8 [len(indices), H, W, 3] RGB frames at ``indices`` (frame numbers in presentation order)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size == 0:
            raise ValueError(f"{self.path}: get_frames needs at least one index")
        if idx.min() < 0 or idx.max() >= self.num_frames:
            raise IndexError(f"{self.path}: frame indices {idx.min()}..{idx.max()} outside 0..{self.num_frames - 1}")
        unique, inverse = np.unique(idx, return_inverse=True)
        frames = self._decode_sorted(unique)
        if len(frames) != len(unique):
            raise RuntimeError(f"{self.path}: decoded {len(frames)} of {len(unique)} requested frames")
        return frames[inverse]

    @abstractmethod
    def _decode_sorted(self, indices: np.ndarray) -> np.ndarray:
        """uint8 [K, H, W, 3] frames at ascending unique ``indices`` (each backend decodes its own way)."""

    def close(self) -> None:  # noqa: B027  (a no-op default: backends without resources need not override it)
        pass

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class DecordReader(VideoReader):
    def __init__(self, path: str) -> None:
        import decord

        self.path = path
        self._vr = decord.VideoReader(path, num_threads=1, ctx=decord.cpu(0))
        self.num_frames = len(self._vr)
        self.fps = float(self._vr.get_avg_fps())

    def _decode_sorted(self, indices: np.ndarray) -> np.ndarray:
        return self._vr.get_batch(indices.tolist()).asnumpy()

    def close(self) -> None:
        self._vr = None


class PyAVReader(VideoReader):
    """Decodes forward from the start up to the last wanted frame.

    Why not seek: PyAV seeks by timestamp, and mapping frame numbers to timestamps is exactly what goes wrong
    on variable-frame-rate and badly muxed files; a forward decode of a short clip is cheap and always exact.
    """

    def __init__(self, path: str) -> None:
        import av

        self.path = path
        self._container = av.open(path)
        if not self._container.streams.video:
            self._container.close()
            raise ValueError(f"{path}: no video stream")
        stream = self._container.streams.video[0]
        stream.thread_type = "SLICE"
        stream.codec_context.thread_count = 1
        self._stream = stream
        rate = stream.average_rate or stream.guessed_rate
        self.fps = float(rate) if rate else 0.0
        self.num_frames = int(stream.frames) or self._count_packets()

    def _count_packets(self) -> int:
        """Frame count when the container has none in its header (webm): one demux pass, no decoding."""
        count = sum(1 for packet in self._container.demux(self._stream) if packet.size > 0)
        self._container.seek(0, stream=self._stream)
        return count

    def _decode_sorted(self, indices: np.ndarray) -> np.ndarray:
        self._container.seek(0, stream=self._stream)
        wanted, last, out = set(indices.tolist()), int(indices[-1]), []
        for i, frame in enumerate(self._container.decode(self._stream)):
            if i in wanted:
                out.append(frame.to_ndarray(format="rgb24"))
            if i >= last:
                break
        return np.stack(out) if out else np.empty((0, 0, 0, 3), np.uint8)

    def close(self) -> None:
        self._container.close()


class TorchCodecReader(VideoReader):
    def __init__(self, path: str) -> None:
        from torchcodec.decoders import VideoDecoder

        self.path = path
        self._decoder = VideoDecoder(path, num_ffmpeg_threads=1, dimension_order="NHWC", seek_mode="exact")
        meta = self._decoder.metadata
        self.num_frames = int(meta.num_frames or 0)
        self.fps = float(meta.average_fps or 0.0)

    def _decode_sorted(self, indices: np.ndarray) -> np.ndarray:
        return self._decoder.get_frames_at(indices=indices.tolist()).data.numpy()

    def close(self) -> None:
        self._decoder = None


_READERS: dict[str, Callable[[str], VideoReader]] = {
    "decord": DecordReader, "pyav": PyAVReader, "torchcodec": TorchCodecReader,
}


IMAGE_SIGNATURES: dict[str, Callable[[bytes], bool]] = {
    "JPEG": lambda b: b[:3] == b"\xff\xd8\xff", "PNG": lambda b: b[:8] == b"\x89PNG\r\n\x1a\n",
    "GIF": lambda b: b[:4] == b"GIF8", "BMP": lambda b: b[:2] == b"BM",
    "WebP": lambda b: b[:4] == b"RIFF" and b[8:12] == b"WEBP",
}


def open_video(path: str | os.PathLike, backend: str = "decord") -> VideoReader:
    """Open ``path`` with ``backend`` (decord | pyav | torchcodec); raises on a missing / unreadable file."""
    if backend not in _READERS:
        raise ValueError(f"data.decoder: expected one of {'|'.join(BACKENDS)}, got {backend!r}")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    with open(path, "rb") as f:
        head = f.read(12)
    kind = next((name for name, test in IMAGE_SIGNATURES.items() if test(head)), None)
    if kind is not None:  # ffmpeg would open it as a one-frame "video"
        raise ValueError(f"{path}: a {kind} image, not a video")
    reader = _READERS[backend](path)
    if reader.num_frames <= 0:
        reader.close()
        raise ValueError(f"{path}: no decodable frames")
    return reader


class DecodeTimeout(TimeoutError):
    """A decode took longer than ``data.decode_timeout_s``."""


T = TypeVar("T")
_MAX_HUNG = 16  # decodes hung AT ONCE (abandoned, not yet returned) a process tolerates before it gives up


class _DecodeThread:
    """A daemon thread running submitted functions in order (daemon: a hung decode never blocks exit, which a
    ThreadPoolExecutor thread would, as the interpreter joins those at shutdown)."""

    def __init__(self, on_late_finish: Callable[[], None]) -> None:
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.retired = False
        self._on_late_finish = on_late_finish
        threading.Thread(target=self._loop, name="decode", daemon=True).start()

    def _loop(self) -> None:
        while True:
            job = self.jobs.get()
            if job is not None:
                fn, future = job
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn())
                    except BaseException as e:
                        future.set_exception(e)
            if self.retired:  # the abandoned decode came back after all: no longer hung
                self._on_late_finish()
                return

    def submit(self, fn: Callable[[], T]) -> Future:
        future: Future = Future()
        self.jobs.put((fn, future))
        return future

    def retire(self) -> list:
        """Stop taking jobs; returns the queued ones (for a fresh thread: they are not hung, only queued)."""
        self.retired = True
        queued = []
        while True:
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                queued.append(job)
        self.jobs.put(None)  # wakes the thread if it was idle after all
        return queued


class _Watchdog:
    """One decode thread per process; callers wait on its results with a timeout.

    Why a thread and not a subprocess: a thread hop costs tens of microseconds per decode, a process per decode
    would cost milliseconds and a copy of every frame. The thread also lets a dataset decode the next item while
    it augments the current one (decoders and torch ops release the GIL). A Python thread cannot be killed, so a
    decode that hangs is abandoned (its thread keeps its memory until the decoder returns, if ever) and a fresh
    thread serves the next decode (the jobs queued behind the hung one move to it). ``hung`` counts abandoned
    decodes that have not returned; one that returns late is subtracted, so only decodes stuck at the same time
    count: past ``_MAX_HUNG`` of them the process stops with a clear error instead of leaking without bound.
    Every abandoned decode is still counted by the caller as a ``timeout`` skip. State is per process
    (DataLoader workers fork): the pid is checked.
    """

    def __init__(self) -> None:
        self._pid = -1
        self._thread: _DecodeThread | None = None
        self.hung = 0
        self.abandoned = 0  # in total, for the record
        self._lock = threading.Lock()

    def _late_finish(self) -> None:
        with self._lock:
            self.hung = max(0, self.hung - 1)

    def submit(self, fn: Callable[[], T]) -> tuple[Future, _DecodeThread]:
        with self._lock:
            if self._pid != os.getpid() or self._thread is None:
                if self._pid != os.getpid():
                    self.hung = self.abandoned = 0
                self._pid, self._thread = os.getpid(), _DecodeThread(self._late_finish)
            return self._thread.submit(fn), self._thread

    def result(self, handle: tuple[Future, _DecodeThread], timeout_s: float, what: str = "decoder") -> T:
        future, thread = handle
        try:
            return future.result(timeout=timeout_s)
        except FutureTimeout:
            future.cancel()
            with self._lock:
                if self._thread is thread:
                    fresh = _DecodeThread(self._late_finish)
                    for job in thread.retire():
                        fresh.jobs.put(job)
                    self._thread = fresh
                    self.hung += 1
                    self.abandoned += 1
                if self.hung > _MAX_HUNG:
                    raise RuntimeError(f"{self.hung} decodes ({what}) hung at once past data.decode_timeout_s="
                                       f"{timeout_s}; the decoder is stuck (try another data.decoder)") from None
            raise DecodeTimeout(f"decode took longer than data.decode_timeout_s={timeout_s}") from None


_WATCHDOG = _Watchdog()


def start_decode(fn: Callable[[], T], timeout_s: float | None, what: str = "decoder") -> Callable[[], T]:
    """Start ``fn()`` in the watchdog thread now; the returned ``wait()`` gives its result or raises
    ``DecodeTimeout`` once ``timeout_s`` passed while waiting. ``timeout_s`` None / 0: no thread, ``fn`` runs
    inside ``wait()``. ``what`` names the decoder in the error when decodes keep hanging."""
    if not timeout_s or timeout_s <= 0:
        return fn
    handle = _WATCHDOG.submit(fn)
    return lambda: _WATCHDOG.result(handle, timeout_s, what)



SKIP_REASONS = ("missing", "empty", "open_error", "decode_error", "timeout")


class UnreadableError(Exception):
    """A video / image that cannot be used; ``reason`` is one of SKIP_REASONS."""

    def __init__(self, reason: str, path: str, detail: str = "") -> None:
        super().__init__(f"{path}: {reason}" + (f" ({detail})" if detail else ""))
        self.reason, self.path, self.detail = reason, path, detail


def describe(e: BaseException) -> str:
    return one_line(e, with_type=True)[:200]  # a skip record's detail: bounded


def check_file(path: str) -> None:
    """Raise UnreadableError('missing' | 'empty') before any decoder is involved."""
    try:
        size = os.path.getsize(path)
    except OSError:
        raise UnreadableError("missing", path, "no such file") from None
    if size == 0:
        raise UnreadableError("empty", path, "zero bytes")


def start_read(path: str, work: Callable[[], np.ndarray], timeout_s: float | None,
               what: str = "decoder") -> Callable[[], np.ndarray]:
    """Start ``work`` (a decode of ``path`` raising UnreadableError) under the time limit; ``wait()`` -> frames."""
    try:
        check_file(path)
    except UnreadableError as e:
        error = e

        def fail() -> np.ndarray:
            raise error

        return fail
    wait = start_decode(work, timeout_s, what)

    def result() -> np.ndarray:
        try:
            return wait()
        except DecodeTimeout as e:
            raise UnreadableError("timeout", path, str(e)) from None

    return result


def start_clip_read(path: str, backend: str, choose_indices: Callable[[int, float], Sequence[int]],
                    timeout_s: float | None = None) -> Callable[[], np.ndarray]:
    """Begin open + choose indices from (num_frames, fps) + decode + close; ``wait()`` -> uint8 [T, H, W, 3].

    Every failure becomes ``UnreadableError`` with the stage it failed in as its reason. ``choose_indices`` runs
    in the decode thread: give it its own random generator.
    """

    def work() -> np.ndarray:
        try:
            reader = open_video(path, backend)
        except Exception as e:  # decord's DECORDError is not a RuntimeError
            raise UnreadableError("open_error", path, describe(e)) from None
        try:
            frames = reader.get_frames(choose_indices(reader.num_frames, reader.fps))
        except Exception as e:
            raise UnreadableError("decode_error", path, describe(e)) from None
        finally:
            reader.close()
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise UnreadableError("decode_error", path, f"got frames {frames.dtype} {tuple(frames.shape)}")
        return frames

    return start_read(path, work, timeout_s, f"data.decoder={backend}")


def read_clip(path: str, backend: str, choose_indices: Callable[[int, float], Sequence[int]],
              timeout_s: float | None = None) -> np.ndarray:
    """``start_clip_read(...)()``: one item's whole decode under one time limit."""
    return start_clip_read(path, backend, choose_indices, timeout_s)()
