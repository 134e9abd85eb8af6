"""The Django-free throughput benchmark for a GPU: many decoders feeding large batches.

    python -m bench.benchmark [VIDEO] [--feeds dataloader,ring,torchcodec] [--decoders 1,8,14]
                              [--batch-size 256] [--fit-on-device] [--json out.json] ...

Run by scripts/gpu_bench.sh (`main`, behind `python -m bench.benchmark`): the ceiling and
the encoder alone at large batches (measured as bench/benchmark.py measures them), the
engine's own path (`engine_run`), then `pipeline_run` per feed and decoder count: decoders
feeding frames (`FEEDS`: a DataLoader, the shared-memory ring of bench/ring.py, or
torchcodec) and this process scoring them (`throughput_benchmark`). Results and what was
tuned: docs/performance.md, "GPU".
"""

from __future__ import annotations

import contextlib
import json
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import IterableDataset

from bench.benchmark import (
    ANOMALY,
    DEFAULT_VIDEO,
    NORMAL,
    _sync,
    encoder_images_per_s,
    machine_info,
    matmul_gflops,
    model_gflops,
    peak_rss_mib,
    video_info,
)
from detection.engine import ModelSpec, load_model
from detection.engine.loader import LoadedModel

# How frames reach the model (issue 16, item 4), compared side by side by the GPU run:
# - "dataloader": decoder processes of a PyTorch DataLoader, a new shared tensor per batch;
# - "ring": decoder processes writing into a preallocated shared ring of slots (bench/ring.py);
# - "torchcodec": decoder threads in this process with torchcodec, on the GPU (NVDEC) when
#   the model is on one, else on the CPU; the frames are fitted where they were decoded.
FEEDS = ("dataloader", "ring", "torchcodec")


class TorchcodecUnavailable(RuntimeError):
    """torchcodec (the optional `gpu` extra) or the FFmpeg libraries it loads are missing."""


def torchcodec_decoder() -> Any:
    """torchcodec's `VideoDecoder`, or `TorchcodecUnavailable` with a one-line reason."""
    try:
        from torchcodec.decoders import VideoDecoder
    except Exception as exc:  # noqa: BLE001 - ImportError, or RuntimeError without FFmpeg
        raise TorchcodecUnavailable(
            "the torchcodec feed needs torchcodec 0.17 (pip install '.[gpu]') and FFmpeg's "
            "shared libraries, major version 4 to 9 (Debian: libavformat59 libavfilter8 "
            f"libavdevice59 libswscale6): {_load_error(exc)}"
        ) from None
    return VideoDecoder


def _load_error(exc: Exception) -> str:
    """One line out of torchcodec's page-long loading error: the libraries it missed."""
    import re

    text = str(exc).strip() or type(exc).__name__
    found = re.findall(r"(\S+\.so[.\d]*): cannot open shared object file", text)
    found += re.findall(r"undefined symbol: \S+", text)
    if not found:
        return text.splitlines()[0][:300]
    return f"{text.splitlines()[0][:60]} missing: {', '.join(dict.fromkeys(found))}"[:400]


def frame_tag(loop: int, index: int) -> int:
    """One int64 per frame of a pipeline run: the pass over the video and the frame's index."""
    return (loop << 32) | index


def sample_indices(total: int, fps: float, sampling_fps: float) -> list[int]:
    """The frame indices `VideoReader.frames` yields for a stream of `total` frames."""
    step = fps / sampling_fps
    indices: list[int] = []
    k, index = 1, 0
    while index < total:
        indices.append(index)
        index = max(index + 1, math.ceil(k * step - 1e-9))
        k += 1
    return indices


class DecodedChunks(IterableDataset):
    """Each DataLoader worker decodes `video` `loops` times and fits the sampled frames to
    the model's input size: uint8 BGR chunks of `chunk` frames, one GPU batch each.

    A worker stands for one file or camera; the chunks cross to the main process through
    shared memory (PyTorch's DataLoader), so only handles are pickled. `fit_on_device`: the
    worker only crops (a view, then one copy into the chunk) and the main process resizes
    on the model's device (detection/engine/area_resize.py). `tagged`: each chunk comes as
    (frames, producers, tags), which worker decoded each frame and `frame_tag` of it.
    """

    def __init__(
        self,
        video: str | Path,
        sampling_fps: float,
        preprocess: Any,
        chunk: int,
        loops: int,
        fit_on_device: bool = False,
        tagged: bool = False,
    ) -> None:
        self.video, self.sampling_fps = str(video), sampling_fps
        self.preprocess, self.chunk, self.loops = preprocess, chunk, loops
        self.fit_on_device, self.tagged = fit_on_device, tagged

    def __iter__(self) -> Iterator[Any]:
        from torch.utils.data import get_worker_info

        from detection.engine import VideoReader
        from detection.engine.area_resize import crop_box
        from detection.engine.preprocess import fit_frame

        cv2.setNumThreads(1)  # one decoder per core: no nested thread pools
        info = get_worker_info()
        worker = info.id if info is not None else 0
        frames: list[np.ndarray] = []
        tags: list[int] = []

        def chunk() -> Any:
            batch = torch.from_numpy(np.stack(frames))
            if not self.tagged:
                return batch
            return batch, torch.full((len(tags),), worker, dtype=torch.int64), torch.tensor(tags)

        for loop in range(self.loops):
            with VideoReader(self.video) as reader:
                for frame in reader.frames(self.sampling_fps):
                    if self.fit_on_device:
                        h, w = frame.image.shape[:2]
                        left, top, cw, ch = crop_box(w, h, self.preprocess)
                        frames.append(frame.image[top : top + ch, left : left + cw])
                    else:
                        frames.append(fit_frame(frame.image, self.preprocess))
                    tags.append(frame_tag(loop, frame.index))
                    if len(frames) == self.chunk:
                        yield chunk()
                        frames, tags = [], []
        if frames:
            yield chunk()


def _fit_into(out: np.ndarray, image: np.ndarray, preprocess: Any) -> None:
    """`fit_frame(image)` written into `out` (a ring slot), resized straight into it if it can."""
    from detection.engine.area_resize import crop_box
    from detection.engine.preprocess import fit_frame

    h, w = image.shape[:2]
    left, top, cw, ch = crop_box(w, h, preprocess)
    out_h, out_w = preprocess.size
    if preprocess.resize_mode == "shortest" and cw >= out_w and ch >= out_h and cw * ch > 0:
        if (cw, ch) == (out_w, out_h):
            np.copyto(out, image[top : top + ch, left : left + cw])
        else:  # what fit_frame does (crop, then INTER_AREA to shrink), with no new array
            crop = image[top : top + ch, left : left + cw]
            cv2.resize(crop, (out_w, out_h), dst=out, interpolation=cv2.INTER_AREA)
    else:
        np.copyto(out, fit_frame(image, preprocess))


def ring_decoder(
    video: str | Path,
    sampling_fps: float,
    preprocess: Any,
    loops: int,
    fit_on_device: bool,
    frame_shape: tuple[int, ...],
) -> Callable[[Any], None]:
    """A ring producer (bench/ring.py): decodes `video` `loops` times with OpenCV and writes
    each sampled frame, fitted (or only cropped, `fit_on_device`), straight into a slot."""
    from detection.engine.area_resize import crop_box

    def produce(writer: Any) -> None:
        from detection.engine import VideoReader

        cv2.setNumThreads(1)  # one decoder per core: no nested thread pools
        for loop in range(loops):
            with VideoReader(video) as reader:
                for frame in reader.frames(sampling_fps):
                    image = frame.image
                    if fit_on_device:
                        h, w = image.shape[:2]
                        left, top, cw, ch = crop_box(w, h, preprocess)
                        if (ch, cw, 3) != frame_shape:
                            raise ValueError(
                                f"{video}: frame {frame.index} crops to {cw}x{ch}, the ring's "
                                f"slots hold {frame_shape[1]}x{frame_shape[0]}"
                            )
                        crop = image[top : top + ch, left : left + cw]
                        np.copyto(writer.frame(frame_tag(loop, frame.index)), crop)
                    else:
                        _fit_into(writer.frame(frame_tag(loop, frame.index)), image, preprocess)

    return produce


class TorchcodecFeed:
    """`decoders` threads of this process, each decoding `video` `loops` times with torchcodec
    on `device` (NVDEC on a CUDA device, FFmpeg on the CPU otherwise) and fitting the sampled
    frames there (area_resize.fit_batch): chunks of (frames, producers, tags), the frames
    float (N, h, w, 3) BGR in 0-255 on `device`, ready for `preprocess.normalize`.

    Threads, not processes: with NVDEC the frames are on the GPU already, and torchcodec's
    decoding (a PyTorch operator) runs without the GIL. The frames sampled and the black ones
    skipped are those `VideoReader.frames` gives (same rate, same mean-intensity level).
    """

    def __init__(
        self,
        video: str | Path,
        sampling_fps: float,
        preprocess: Any,
        *,
        decoders: int,
        chunk: int,
        loops: int,
        device: str,
    ) -> None:
        from detection.engine import VideoReader

        self.video, self.sampling_fps, self.preprocess = str(video), sampling_fps, preprocess
        self.decoders, self.chunk, self.loops = decoders, chunk, loops
        self.device = device
        with VideoReader(video) as reader:  # the header rate OpenCV's path samples by
            self.video_fps = reader.stats.fps
        self.status = ""  # torchcodec's word on NVDEC or its CPU fallback, after a frame

    def _decode(self, decoder_cls: Any, loop: int, record: bool) -> Iterator[Any]:
        from detection.engine.area_resize import fit_batch
        from detection.engine.video import DEFAULT_BLACK_LEVEL

        decoder = decoder_cls(
            self.video, device=self.device, dimension_order="NHWC", num_ffmpeg_threads=1
        )
        indices = sample_indices(len(decoder), self.video_fps, self.sampling_fps)
        for start in range(0, len(indices), self.chunk):
            wanted = indices[start : start + self.chunk]
            frames = decoder.get_frames_at(wanted).data  # (N, H, W, 3) RGB uint8
            if record and not self.status:
                self.status = str(decoder.cpu_fallback)
            # VideoReader skips frames whose mean intensity is under the black level.
            sums = frames.sum(dim=(1, 2, 3), dtype=torch.int64)
            keep = (sums.double() / frames[0].numel() >= DEFAULT_BLACK_LEVEL).tolist()
            if not all(keep):
                frames = frames[torch.tensor(keep, device=frames.device)]
                wanted = [i for i, k in zip(wanted, keep, strict=True) if k]
            if not wanted:
                continue
            # fit_batch works on any channel order; flip to the BGR `normalize` expects.
            fitted = fit_batch(frames, self.preprocess).flip(-1)
            yield fitted, torch.tensor([frame_tag(loop, i) for i in wanted])

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        import queue

        decoder_cls = torchcodec_decoder()
        out: queue.Queue[tuple[str, int, Any, Any]] = queue.Queue(maxsize=2 * self.decoders)
        stop = threading.Event()

        def put(item: tuple[str, int, Any, Any]) -> bool:
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def decode(index: int) -> None:
            try:
                for loop in range(self.loops):
                    for fitted, tags in self._decode(decoder_cls, loop, record=index == 0):
                        if not put(("chunk", index, fitted, tags)):
                            return
            except BaseException as exc:  # noqa: BLE001 - raised again by the consumer
                put(("error", index, exc, None))
            else:
                put(("done", index, None, None))

        threads = [
            threading.Thread(target=decode, args=(i,), name=f"torchcodec-{i}", daemon=True)
            for i in range(self.decoders)
        ]
        for thread in threads:
            thread.start()
        running = set(range(self.decoders))
        try:
            while running:
                kind, index, payload, tags = out.get()
                if kind == "chunk":
                    yield payload, torch.full((len(tags),), index, dtype=torch.int64), tags
                elif kind == "done":
                    running.discard(index)
                else:
                    raise RuntimeError(
                        f"torchcodec decoder {index} failed: {type(payload).__name__}: {payload}"
                    ) from payload
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=10)


class _LaggedScores:
    """Scores batches as `Scorer.score_features` does, read one batch late.

    Reading a batch's scores waits for its encoder; reading the previous batch's instead
    lets this batch's copy and encoder queue behind it, so the GPU does not idle while the
    CPU gathers the next batch and launches its kernels.
    """

    def __init__(self, scorer: Any, keep: bool) -> None:
        self.scorer, self.keep = scorer, keep
        self.scored = 0
        self.rows: list[tuple[int, int, float]] = []  # (producer, tag, score) when kept
        self._pending: tuple[torch.Tensor, Any, torch.Tensor, torch.Tensor] | None = None

    def add(self, features: torch.Tensor, producers: torch.Tensor, tags: torch.Tensor) -> None:
        with torch.inference_mode():
            sims = (features @ self.scorer.text.T).to("cpu", non_blocking=True)
        event = None
        if features.is_cuda:
            event = torch.cuda.Event()
            event.record()
        self.collect()
        self._pending = (sims, event, producers, tags)

    def collect(self) -> None:
        from detection.engine.scoring import compute_anomaly_scores

        if self._pending is None:
            return
        sims, event, producers, tags = self._pending
        self._pending = None
        if event is not None:
            event.synchronize()
        values = sims.numpy().astype(np.float64)
        scores = compute_anomaly_scores(values[:, 0], values[:, 1], self.scorer.logit_scale)
        self.scored += len(scores)
        if self.keep:
            self.rows.extend(zip(producers.tolist(), tags.tolist(), scores.tolist(), strict=True))


@dataclass(frozen=True)
class FeedOptions:
    """How a pipeline run's frames reach the model: `pipeline_run`'s arguments of these names.

    `feed`: one of `FEEDS`. `decoders`: processes (threads for torchcodec), each decoding the
    video `loops` times; the encoder gets batches of `batch_size` frames. `fit_on_device`:
    decoders send cropped full-size frames and the resize to the model's input runs on the
    device as two matrix products (area_resize.fit_batch). `ring_chunk`: frames per ring
    slot (and per torchcodec call); `ring_pin`: how the ring reaches a GPU
    (`FrameRing.batches`).
    """

    feed: str
    decoders: int
    batch_size: int
    loops: int
    fit_on_device: bool = False
    ring_chunk: int = 32
    ring_pin: str = "register"

    @property
    def chunk(self) -> int:
        """Frames per ring slot or torchcodec call: `ring_chunk`, at most a batch."""
        return max(1, min(self.ring_chunk, self.batch_size))


def _feed(
    options: FeedOptions,
    loaded: LoadedModel,
    video: str | Path,
    sampling_fps: float,
    info: dict[str, Any],
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(frames, producers, tags) batches from one of `FEEDS`; `info` gets what it used."""
    cuda = loaded.device.startswith("cuda")
    if options.feed == "dataloader":
        from torch.utils.data import DataLoader

        dataset = DecodedChunks(
            video,
            sampling_fps,
            loaded.preprocess,
            options.batch_size,
            options.loops,
            options.fit_on_device,
            tagged=True,
        )
        yield from DataLoader(
            dataset,
            batch_size=None,
            num_workers=options.decoders,
            pin_memory=cuda,
            prefetch_factor=4 if options.decoders else None,
        )
    elif options.feed == "ring":
        from bench.ring import FrameRing
        from detection.engine.area_resize import crop_box

        if options.decoders < 1:
            raise ValueError("the ring feed needs at least one decoder process")
        if options.fit_on_device:
            meta = video_info(Path(video))
            _, _, cw, ch = crop_box(meta["width"], meta["height"], loaded.preprocess)
            shape: tuple[int, ...] = (ch, cw, 3)
        else:
            shape = (*loaded.preprocess.size, 3)
        # Two batches (one copying, one filling) and two slots per decoder (one it writes,
        # one waiting in the queue): decoders block only when the consumer is behind.
        slots = 2 * math.ceil(options.batch_size / options.chunk) + 2 * options.decoders
        produce = ring_decoder(
            video, sampling_fps, loaded.preprocess, options.loops, options.fit_on_device, shape
        )
        with FrameRing(slots, options.chunk, shape) as ring:
            info.update(ring_slots=slots, ring_chunk=options.chunk, ring_mib=ring.nbytes / 2**20)
            ring.start([produce] * options.decoders)
            for batch in ring.batches(options.batch_size, loaded.device, pin=options.ring_pin):
                info["transfer"] = ring.transfer
                yield batch.frames, batch.producers, batch.tags
    elif options.feed == "torchcodec":
        if options.decoders < 1:
            raise ValueError("the torchcodec feed needs at least one decoder thread")
        source = TorchcodecFeed(
            video,
            sampling_fps,
            loaded.preprocess,
            decoders=options.decoders,
            chunk=options.chunk,
            loops=options.loops,
            device=loaded.device if cuda else "cpu",
        )
        # Decoders give chunks; the encoder gets batches of at least `batch_size` frames.
        parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        count = 0
        with contextlib.closing(iter(source)) as chunks:
            for part in chunks:
                info["torchcodec_status"] = source.status
                parts.append(part)
                count += len(part[0])
                if count >= options.batch_size:
                    yield tuple(torch.cat(p) for p in zip(*parts, strict=True))  # type: ignore[misc]
                    parts, count = [], 0
        if parts:
            yield tuple(torch.cat(p) for p in zip(*parts, strict=True))  # type: ignore[misc]
    else:
        raise ValueError(f"feed must be one of {', '.join(FEEDS)}, not {options.feed!r}")


def pipeline_run(
    loaded: LoadedModel,
    video: str | Path,
    sampling_fps: float,
    *,
    decoders: int,
    batch_size: int,
    loops: int,
    normal: str = NORMAL,
    anomaly: str = ANOMALY,
    decode_only: bool = False,
    fit_on_device: bool = False,
    feed: str = "dataloader",
    ring_chunk: int = 32,
    ring_pin: str = "register",
    keep_scores: bool = False,
) -> dict[str, Any]:
    """`decoders` decoders feed frames (`feed`, one of `FEEDS`); this process scores them.

    The uint8 batches cross to the device without waiting (pinned by the DataLoader, or
    from the ring: bench/ring.py), are normalised there, encoded at the model's precision
    and scored as the worker does (`encode_images`, then `Scorer.score_features`'s
    similarities and `compute_anomaly_scores`, read one batch late). `decode_only` measures
    the feeding alone. The feed's arguments are `FeedOptions`' (the torchcodec feed always
    fits on the device). `keep_scores` adds `scores`: [producer, frame_tag, score] for
    every frame, sorted.
    """
    from detection.engine import Scorer
    from detection.engine.area_resize import fit_batch
    from detection.engine.preprocess import normalize
    from detection.engine.scoring import encode_images

    if feed not in FEEDS:
        raise ValueError(f"feed must be one of {', '.join(FEEDS)}, not {feed!r}")
    if feed == "torchcodec":
        torchcodec_decoder()  # a missing torchcodec says so before anything starts
        fit_on_device = True
    options = FeedOptions(feed, decoders, batch_size, loops, fit_on_device, ring_chunk, ring_pin)
    scorer = Scorer(loaded, normal, anomaly)
    scores = _LaggedScores(scorer, keep_scores)
    info: dict[str, Any] = {}
    frames = 0
    start = time.perf_counter()
    batches = _feed(options, loaded, video, sampling_fps, info)
    with contextlib.closing(batches):  # stops decoders at once if scoring fails
        for chunk, producers, tags in batches:
            frames += len(chunk)
            if decode_only:
                continue
            if fit_on_device and feed != "torchcodec":
                chunk = fit_batch(chunk.to(loaded.device, non_blocking=True), loaded.preprocess)
            scores.add(encode_images(loaded, normalize(chunk, loaded)), producers, tags)
        scores.collect()
    _sync(loaded.device)
    seconds = time.perf_counter() - start
    result: dict[str, Any] = {
        "feed": feed,
        "decoder": "torchcodec" if feed == "torchcodec" else "opencv",
        "decoders": decoders,
        "batch_size": batch_size,
        "frames": frames,
        "seconds": seconds,
        "fps": frames / seconds,
        "decode_only": decode_only,
        "fit_on_device": fit_on_device,
        **info,
    }
    if keep_scores:
        result["scores"] = sorted(scores.rows)
    return result


def engine_run(
    loaded: LoadedModel, video: str | Path, sampling_fps: float, batch_size: int
) -> dict[str, Any]:
    """What `analyze_video` runs, without Django: one decoder thread, `score_video`."""
    from detection.engine import Scorer, VideoReader, score_video

    scorer = Scorer(loaded, NORMAL, ANOMALY)
    start = time.perf_counter()
    with VideoReader(video) as reader:
        frames = sum(
            len(b) for b in score_video(reader, scorer, sampling_fps, batch_size=batch_size)
        )
    seconds = time.perf_counter() - start
    return {"frames": frames, "seconds": seconds, "fps": frames / seconds, "batch_size": batch_size}


def write_h264_copy(src: str | Path, dst: str | Path, crf: int = 23) -> dict[str, Any]:
    """An H.264 MP4 copy of `src`, every frame, made with PyAV's libx264 (run it here).

    What cameras send and what NVDEC decodes: vtest.avi is MS-MPEG4 v3, which NVDEC does not
    decode (torchcodec would fall back to its CPU). The GPU machine has no H.264 encoder
    (OpenCV's wheels have none; PyAV is not there), so scripts/gpu_bench.sh carries this copy.
    """
    from fractions import Fraction

    import av

    cap = cv2.VideoCapture(str(src))
    try:
        fps = float(cap.get(cv2.CAP_PROP_FPS)) or 25.0
        width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        frames = 0
        with av.open(str(dst), "w") as container:
            stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.options = {"crf": str(crf), "preset": "medium"}
            while True:
                ok, image = cap.read()
                if not ok:
                    break
                frame = av.VideoFrame.from_ndarray(image, format="bgr24")
                container.mux(stream.encode(frame))
                frames += 1
            container.mux(stream.encode())
    finally:
        cap.release()
    return {"path": str(dst), "frames": frames, "fps": fps, "bytes": Path(dst).stat().st_size}


def throughput_benchmark(
    video: str | Path = DEFAULT_VIDEO,
    *,
    spec: ModelSpec,
    sampling_fps: float | None = None,
    decoders: Sequence[int] = (),
    batch_sizes: Sequence[int] = (64, 256, 1024),
    batch_size: int = 256,
    loops: int = 2,
    matmul_sizes: Sequence[int] | None = None,
    fit_on_device: bool = False,
    feeds: Sequence[str] = ("dataloader",),
    ring_chunk: int = 32,
    ring_pin: str = "register",
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """The device's throughput, Django-free: for a GPU (scripts/gpu_bench.sh), or any device.

    `sampling_fps` None scores every frame (the file's own rate): at 1 frame/s a GPU would
    mostly wait for decoding. Each part that fails is reported as an error, not raised, so
    one run on a lent machine brings back all it can. Each of `feeds` runs at every decoder
    count, decoding alone then end to end: "dataloader" under the keys `decode_only` and
    `pipeline`, the others under `decode_only_<feed>` and `pipeline_<feed>`; with
    `fit_on_device` the OpenCV feeds also run with the resize on the device (`..._fit_on_device`).
    """
    for feed in feeds:
        if feed not in FEEDS:
            raise ValueError(f"feed must be one of {', '.join(FEEDS)}, not {feed!r}")
    clock = time.perf_counter()
    report: dict[str, Any] = {"machine": machine_info(), "video": video_info(Path(video))}
    fps = sampling_fps or report["video"]["fps"] or 25.0
    report["video"]["sampling_fps"] = fps
    if not decoders:
        cores = report["machine"]["cores"] or 2
        decoders = sorted({1, max(1, cores // 2), max(1, cores - 2)})

    def attempt(name: str, fn: Callable[[], Any]) -> Any:
        log(name)
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001 - reported; the other parts still run
            result = {"error": f"{type(exc).__name__}: {exc}"}
            log(f"  failed: {result['error']}")
        else:
            log(f"  {json.dumps(result, default=str)[:300]}")
        return result

    loaded = load_model(spec)
    gflops = model_gflops(loaded)
    rate = matmul_gflops(loaded.dtype, loaded.device, matmul_sizes)
    report["model"] = {**loaded.describe(), "gflops_per_image": gflops}
    report["ceiling"] = {
        "precision": loaded.precision,
        "matmul_gflops": rate,
        "images_per_s": rate / gflops,
    }
    report["encoder"] = {
        str(bs): attempt(
            f"encoder alone, batch {bs}", lambda bs=bs: encoder_images_per_s(loaded, bs)
        )
        for bs in batch_sizes
    }
    report["engine"] = attempt(
        "the engine's own path (one decoder thread, score_video)",
        lambda: engine_run(loaded, video, fps, batch_size),
    )

    def pipelines(label: str, **options: Any) -> list[Any]:
        """`pipeline_run` once per decoder count, each attempt reported on its own."""
        return [
            attempt(
                label.format(n=n),
                lambda n=n: pipeline_run(
                    loaded,
                    video,
                    fps,
                    decoders=n,
                    batch_size=batch_size,
                    loops=loops,
                    ring_chunk=ring_chunk,
                    ring_pin=ring_pin,
                    **options,
                ),
            )
            for n in decoders
        ]

    report["feeds"] = list(feeds)
    for feed in feeds:
        key = "" if feed == "dataloader" else f"_{feed}"
        who = {
            "dataloader": "{n} decoder processes (DataLoader)",
            "ring": "{n} decoder processes (shared ring)",
            "torchcodec": "{n} torchcodec decoder threads (NVDEC on a GPU), resize on the device",
        }[feed]
        report[f"decode_only{key}"] = pipelines(
            f"decoding alone, {who}", decode_only=True, feed=feed
        )
        report[f"pipeline{key}"] = pipelines(f"end to end, {who}, batch {batch_size}", feed=feed)
        if fit_on_device and feed != "torchcodec":
            # Issue 16, item 4: the same pipeline with the resize moved onto the device.
            report[f"decode_only{key}_fit_on_device"] = pipelines(
                f"decoding and cropping alone, {who} (resize on the device)",
                decode_only=True,
                fit_on_device=True,
                feed=feed,
            )
            report[f"pipeline{key}_fit_on_device"] = pipelines(
                f"end to end, {who}, resize on the device", fit_on_device=True, feed=feed
            )
    best = max(
        (
            run.get("fps", 0.0)
            for name, runs in report.items()
            if name.startswith("pipeline") and isinstance(runs, list)
            for run in runs
        ),
        default=0.0,
    )
    report["best_fps"] = best
    report["best_ceiling_fraction"] = best / report["ceiling"]["images_per_s"]
    report["peak_rss_mib"] = peak_rss_mib()
    if loaded.device.startswith("cuda"):
        report["gpu_peak_memory_mib"] = torch.cuda.max_memory_allocated() / 2**20
    report["seconds"] = time.perf_counter() - clock
    return report


def format_throughput(report: dict[str, Any]) -> str:
    """The pipeline runs of a `throughput_benchmark` report as a table (frames/s)."""
    encoder = report.get("encoder", {}).values()  # images/s, or {"error": ...}
    best_encoder = max((e for e in encoder if isinstance(e, int | float)), default=0.0)
    video, model = report.get("video", {}), report.get("model", {})
    engine = report.get("engine", {})
    lines = [
        f"{video.get('path')}: {video.get('width')}x{video.get('height')}, "
        f"{video.get('frames')} frames at {video.get('sampling_fps', 0):g}/s; "
        f"{model.get('model')} {model.get('precision')} on {model.get('device')}; "
        f"the engine's own path {engine.get('fps', 0):,.0f} frames/s",
        f"{'feed':<11} {'resize on':<10} {'decoders':>8} {'feeding alone':>14} "
        f"{'end to end':>11} {'of encoder':>10}  notes",
    ]

    def fps(run: Any) -> str:
        if not isinstance(run, dict):
            return "-"
        return "error" if "error" in run else f"{run['fps']:,.0f}"

    for feed in report.get("feeds", ["dataloader"]):
        key = "" if feed == "dataloader" else f"_{feed}"
        fits = [""] if feed == "torchcodec" else ["", "_fit_on_device"]
        for fit in fits:
            alone = report.get(f"decode_only{key}{fit}")
            ends = report.get(f"pipeline{key}{fit}")
            if not ends:
                continue
            where = "device" if (fit or feed == "torchcodec") else "decoders"
            for i, run in enumerate(ends):
                first = alone[i] if alone and i < len(alone) else None
                n = run.get("decoders", "?") if isinstance(run, dict) else "?"
                share = (
                    f"{run['fps'] / best_encoder:.0%}"
                    if best_encoder and isinstance(run, dict) and "fps" in run
                    else "-"
                )
                notes = ""
                if isinstance(run, dict):
                    notes = run.get("error") or run.get("transfer") or ""
                    if run.get("torchcodec_status"):
                        notes = run["torchcodec_status"]
                lines.append(
                    f"{feed:<11} {where:<10} {n!s:>8} {fps(first):>14} {fps(run):>11} "
                    f"{share:>10}  {notes[:70]}"
                )
    if best_encoder:
        lines.append(f"encoder alone, best batch: {best_encoder:,.0f} images/s")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m bench.benchmark`: the Django-free throughput benchmark (GPU path)."""
    import argparse
    import logging
    import sys

    parser = argparse.ArgumentParser(
        prog="python -m bench.benchmark",
        description="Throughput of the engine on a device: encoder alone, the engine's own "
        "path, and N decoders feeding large batches. JSON on stdout, a table on stderr.",
    )
    parser.add_argument("video", nargs="?", default=str(DEFAULT_VIDEO))
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--pretrained", default="none")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--fps", type=float, help="frames scored per second (default: all)")
    parser.add_argument("--decoders", help="decoder process counts, e.g. 1,8,14")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--encoder-batches", default="64,256,1024")
    parser.add_argument("--loops", type=int, default=2, help="passes over the video per decoder")
    parser.add_argument("--matmul-sizes", help="square sizes for the ceiling")
    parser.add_argument("--json", metavar="FILE", help="also write the JSON here")
    parser.add_argument(
        "--fit-on-device",
        action="store_true",
        help="also run the OpenCV feeds with the resize on the device (area_resize.fit_batch)",
    )
    parser.add_argument(
        "--feeds",
        default="dataloader",
        help=f"how frames reach the model, comma-separated, of: {', '.join(FEEDS)} "
        "(torchcodec: the optional `gpu` extra; NVDEC when the device is CUDA)",
    )
    parser.add_argument(
        "--ring-chunk",
        type=int,
        default=32,
        help="frames per ring slot, and per torchcodec decoding call",
    )
    parser.add_argument(
        "--ring-pin",
        choices=("register", "stage"),
        default="register",
        help="how the ring reaches a GPU: page-locked in place (cudaHostRegister, falls back "
        "to staging if refused) or gathered into pinned staging buffers",
    )
    parser.add_argument(
        "--make-h264",
        metavar="DST",
        help="only write an H.264 MP4 copy of the video to DST (PyAV's libx264) and exit",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    def ints(text: str | None) -> list[int]:
        return [int(x) for x in text.split(",") if x.strip()] if text else []

    if args.make_h264:
        print(json.dumps(write_h264_copy(args.video, args.make_h264)))
        return
    feeds = [f.strip() for f in args.feeds.split(",") if f.strip()]
    unknown = [f for f in feeds if f not in FEEDS]
    if unknown:
        parser.error(f"--feeds: unknown {', '.join(unknown)} (choose from {', '.join(FEEDS)})")
    if "torchcodec" in feeds:
        try:
            torchcodec_decoder()
        except TorchcodecUnavailable as exc:
            sys.exit(f"{parser.prog}: --feeds torchcodec: {exc}")
    report = throughput_benchmark(
        args.video,
        spec=ModelSpec(args.model, args.pretrained, args.device, args.precision),
        sampling_fps=args.fps,
        decoders=ints(args.decoders),
        batch_sizes=ints(args.encoder_batches),
        batch_size=args.batch_size,
        loops=args.loops,
        matmul_sizes=ints(args.matmul_sizes) or None,
        fit_on_device=args.fit_on_device,
        feeds=feeds,
        ring_chunk=args.ring_chunk,
        ring_pin=args.ring_pin,
        log=lambda m: print(m, file=sys.stderr, flush=True),
    )
    text = json.dumps(report, indent=2, default=str)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(format_throughput(report), file=sys.stderr)
