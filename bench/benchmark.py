"""The speed benchmark: the prototype's loop, `analyze_video` and the worker, side by side.

    python manage.py bench [VIDEO] [--fps 1] [--model ViT-B-16] [--repeats 2] [--json out.json]

All paths run in one process, interleaved (prototype, API, worker, prototype, ...), on the
same video, sampling rate and architecture, so a busy machine slows them alike:

1. the prototype's loop, reimplemented faithfully: `cv2.VideoCapture.read()` of every frame;
   for each sampled frame BGR->RGB, `PIL.Image.fromarray`, open_clip's own preprocess
   transform, a batch of 1 through the fp32 model, normalised features and
   `softmax(100 * cos)` against text features computed once per video;
2. `detection.api.analyze_video` (the project's precision, batches, decoding in a thread);
3. the worker: a file analysis claimed and run to completion by `Worker(once=True)`, every
   score stored (timed from claim, `started_at`, to completion, `finished_at`).

Also measured: the ceiling (the best measured matmul rate at large square sizes in the
chosen precision / the model's FLOPs per image, counted with `FlopCounterMode`), the
encoder alone at the chosen precision, and the live capacity: N simulated 25-fps cameras
(`PacedFileSource`) scored at 1 frame/s each by one worker; a camera count is held when
no scored frame was older than 2 s when stored and every camera was scored at >= 95 % of
its rate (measured between captures).

The engine parts need no Django; `worker_run` and `live_capacity` need a configured
database (the management command makes a temporary one, tests use pytest-django's).

`python -m bench.benchmark` is the Django-free throughput benchmark for a GPU (run by
scripts/gpu_bench.sh): the encoder alone at large batches, the engine's own path, and N
decoder processes feeding large fp16 batches (`throughput_benchmark`, in bench/gpu.py with
the feeds and `pipeline_run`). Results and what was tuned: docs/performance.md.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import math
import os
import platform
import resource
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from detection.engine import ModelSpec, load_model
from detection.engine.device import cpu_isa
from detection.engine.loader import LoadedModel

DEFAULT_VIDEO = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "vtest.avi"
NORMAL = "a quiet campus path with people walking"
ANOMALY = "a person lying on the ground after a fall"
CAMERA_COUNTS = (1, 2, 4, 8, 16)
MAX_AGE_S = 2.0
MIN_RATE_FRACTION = 0.95  # of the sampling rate, for the slowest camera
PROTOTYPE_SCALE = 100.0


@dataclass
class Run:
    """One timed pass of one path over the video."""

    path: str
    frames: int
    seconds: float
    precision: str = "fp32"  # what the path really ran (from its own metadata)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


@dataclass
class LiveResult:
    cameras: int
    seconds: float
    scored: int  # frames captured inside the measuring window and stored
    min_rate: float  # scored frames/s of the slowest camera
    age_p50: float | None
    age_p95: float | None
    age_max: float | None
    held: bool
    rss_mib: float = 0.0  # the worker process's resident memory when the count ended
    # Its peak, where the count ran in a process of its own (bench/live_worker.py): what a
    # worker alone needs. None in process (the benchmark's other paths share the peak).
    peak_rss_mib: float | None = None


@dataclass
class Report:
    machine: dict[str, Any]
    video: dict[str, Any]
    model: dict[str, Any]
    ceiling: dict[str, Any]
    encoder: dict[str, Any]
    paths: dict[str, dict[str, Any]]
    live: list[dict[str, Any]] = field(default_factory=list)
    live_held: int | None = None
    # analyze_video per scoring mode (prompts, normality, combined): the cost of learning
    # the normal, measured.
    modes: dict[str, dict[str, Any]] = field(default_factory=dict)
    peak_rss_mib: float = 0.0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- the machine and the ceiling -------------------------------------------------------------


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, in MiB.

    Linux's VmHWM, where there is one: `ru_maxrss` keeps the high-water mark of the process
    image before `exec`, so a worker started by the benchmark (2.2 GiB) reported at least
    the benchmark's own peak instead of its own. Elsewhere ru_maxrss (KiB on Linux).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mib() -> float:
    """Resident memory of this process now (VmRSS), 0 where /proc is missing."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def machine_info() -> dict[str, Any]:
    import open_clip

    model_name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                model_name = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": model_name,
        "cores": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "isa": cpu_isa(),
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "opencv": cv2.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "opencv_threads": cv2.getNumThreads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def matmul_gflops(
    dtype: torch.dtype, device: str = "cpu", sizes: Sequence[int] | None = None, repeats: int = 3
) -> float:
    """The best measured square-matmul rate in GFLOP/s (2 n^3 FLOPs per product)."""
    if sizes is None:
        sizes = (4096, 8192) if device.startswith("cuda") else (1024, 2048, 4096)
    best = 0.0
    for n in sizes:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        a @ b  # warm-up: kernel selection
        for _ in range(repeats):
            _sync(device)
            start = time.perf_counter()
            a @ b
            _sync(device)
            best = max(best, 2 * n**3 / (time.perf_counter() - start) / 1e9)
    return best


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


@functools.cache
def _count_packed_linears() -> None:
    """Teach `FlopCounterMode` the packed linear kernel (detection.engine.cpu_kernels),
    which it does not know: a product of (..., K) by a (N, K) weight, 2 x ... x K x N."""
    if not hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        return
    from torch.utils.flop_counter import register_flop_formula

    @register_flop_formula(torch.ops.mkldnn._linear_pointwise)
    def _flops(x_shape: Any, w_shape: Any, *args: Any, **kwargs: Any) -> int:
        return 2 * math.prod(x_shape[:-1]) * x_shape[-1] * w_shape[0]


def model_gflops(loaded: LoadedModel) -> float:
    """FLOPs of one `encode_image` call (multiply and add counted apart), in GFLOP.

    PyTorch's fused attention kernels are invisible to `FlopCounterMode`, so the count runs
    with nn.MultiheadAttention's fast path off and the math attention backend (plain
    matmuls); the packed linear kernels are taught to it. ViT-B-16: 35.13 GFLOP, as
    open_clip's model profile says, packed or not.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    _count_packed_linears()

    h, w = loaded.preprocess.size
    pixels = torch.zeros(1, 3, h, w, device=loaded.device, dtype=loaded.dtype)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with (
            torch.no_grad(),
            sdpa_kernel(SDPBackend.MATH),
            FlopCounterMode(display=False) as counter,
        ):
            loaded.model.encode_image(pixels)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return counter.get_total_flops() / 1e9


def encoder_images_per_s(loaded: LoadedModel, batch_size: int, repeats: int = 3) -> float:
    """The image tower alone on a ready batch at the model's precision: best of `repeats`."""
    h, w = loaded.preprocess.size
    pixels = torch.randn(batch_size, 3, h, w, device=loaded.device).to(loaded.dtype)
    best = math.inf
    with torch.inference_mode():
        for _ in range(2):  # warm-up: oneDNN/cuDNN pick and cache their kernels
            loaded.model.encode_image(pixels)
        for _ in range(repeats):
            _sync(loaded.device)
            start = time.perf_counter()
            loaded.model.encode_image(pixels)
            _sync(loaded.device)
            best = min(best, time.perf_counter() - start)
    return batch_size / best


# --- path 1: the prototype's loop ------------------------------------------------------------


def prototype_model(spec: ModelSpec) -> LoadedModel:
    """The prototype's model: the same architecture and weights, fp32, on the CPU.

    Loaded through open_clip's `create_model_and_transforms` like the prototype; only
    `model`, `tokenizer` and open_clip's own transform (`reference_transform`) are used.
    """
    return load_model(replace(spec, device="cpu", precision="fp32"))


def prototype_run(
    proto: LoadedModel, video: str | Path, normal: str, anomaly: str, sampling_fps: float
) -> tuple[Run, list[float]]:
    """The prototype's loop, faithfully: every frame read, PIL, batch of 1, fp32."""
    from PIL import Image

    model, transform = proto.model, proto.reference_transform
    start = time.perf_counter()
    with torch.no_grad():
        text = model.encode_text(proto.tokenizer([normal, anomaly]))
        text = text / text.norm(dim=-1, keepdim=True)
    cap = cv2.VideoCapture(str(video))
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    interval = max(1, int(fps / sampling_fps))
    scores: list[float] = []
    index = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        if index % interval == 0:
            rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            if rgb.mean() >= 10:  # the prototype skipped black frames
                image = transform(Image.fromarray(rgb)).unsqueeze(0)
                with torch.no_grad():
                    features = model.encode_image(image)
                    features = features / features.norm(dim=-1, keepdim=True)
                    probs = (PROTOTYPE_SCALE * features @ text.T).softmax(dim=-1)
                scores.append(float(probs[0, 1]))
        index += 1
    cap.release()
    return Run("prototype", len(scores), time.perf_counter() - start), scores


# --- path 2: analyze_video -------------------------------------------------------------------


def api_run(
    video: str | Path,
    normal: str,
    anomaly: str,
    sampling_fps: float,
    spec: ModelSpec | None = None,
    batch_size: int | None = None,
) -> Run:
    from detection.api import analyze_video

    start = time.perf_counter()
    result = analyze_video(video, normal, anomaly, sampling_fps, spec=spec, batch_size=batch_size)
    seconds = time.perf_counter() - start
    if result["status"] != "Success":
        raise RuntimeError(f"analyze_video failed: {result['error_message']}")
    return Run("analyze_video", len(result["data"]), seconds, result["metadata"]["precision"])


# --- path 3: the worker ----------------------------------------------------------------------


def worker_run(
    video: str | Path,
    normal: str,
    anomaly: str,
    sampling_fps: float,
    batch_size: int | None = None,
    publisher: Any = None,
) -> Run:
    """A file analysis run to completion by `Worker(once=True)`, scores stored.

    Needs a migrated database and `video` inside DETECTION_VIDEO_DIRS or MEDIA_ROOT. Timed
    from the claim (`started_at`) to completion (`finished_at`): the model is already
    loaded in this process, as in a worker that has been serving for a while.
    """
    from cameras.models import Camera
    from detection.models import Analysis
    from detection.worker.loop import Worker

    camera = Camera.objects.create(name="bench file", kind=Camera.Kind.FILE, source=str(video))
    analysis = Analysis.objects.create(
        camera=camera,
        name="bench",
        normal_prompts=normal,
        anomaly_prompts=anomaly,
        sampling_fps=sampling_fps,
        status=Analysis.Status.QUEUED,
    )
    try:
        kwargs: dict[str, Any] = {"publisher": publisher} if publisher is not None else {}
        worker = Worker(once=True, analysis_id=analysis.pk, batch_size=batch_size, **kwargs)
        worker.run()
        analysis.refresh_from_db()
        if analysis.status != Analysis.Status.COMPLETED:
            raise RuntimeError(
                f"the worker left the analysis {analysis.status}: {analysis.error_message}"
            )
        seconds = (analysis.finished_at - analysis.started_at).total_seconds()
        precision = analysis.metadata.get("precision", "?")
        return Run("worker", analysis.scores.count(), seconds, precision)
    finally:
        camera.delete()  # cascades to the analysis and its scores


# --- live capacity ---------------------------------------------------------------------------


class AgePublisher:
    """Passes messages on and keeps, per score, its age when stored (publish - capture)."""

    def __init__(self, inner: Any = None) -> None:
        self.inner = inner
        self.ages: list[tuple[int, float, float]] = []  # (analysis, captured, age)
        self._lock = threading.Lock()

    def publish(self, analysis_id: int, kind: str, payload: dict[str, Any]) -> None:
        if kind == "score" and payload.get("captured_at"):
            from datetime import datetime

            captured = datetime.fromisoformat(payload["captured_at"]).timestamp()
            with self._lock:
                self.ages.append((analysis_id, captured, payload["published_at"] - captured))
        if self.inner is not None:
            self.inner.publish(analysis_id, kind, payload)

    def flush(self, timeout: float = 5.0) -> bool:
        return self.inner.flush(timeout) if self.inner is not None else True


def make_camera_clip(
    source: str | Path,
    out: Path,
    fps: float = 25.0,
    seconds: float = 8.0,
    gop_s: float = 1.0,
) -> Path:
    """A `seconds`-long copy of `source` re-timed to `fps`: a 25-fps camera.

    H.264 (PyAV's libx264, no B-frames) with a keyframe every `gop_s` seconds and no
    scene-cut keyframes, as IP cameras send by default; that is what the worker's decoding
    modes (DETECTION_DECODE) see on a real camera.
    """
    import av

    cap = cv2.VideoCapture(str(source))
    ok, frame = cap.read()
    if not ok:
        raise RuntimeError(f"{source}: no frame decodes")
    h, w = frame.shape[:2]
    gop = max(1, round(fps * gop_s))
    with av.open(str(out), "w") as container:
        stream = container.add_stream("libx264", rate=round(fps))
        stream.width, stream.height = w - w % 2, h - h % 2
        stream.pix_fmt = "yuv420p"
        stream.options = {"g": str(gop), "keyint_min": str(gop), "sc_threshold": "0", "bf": "0"}
        for _ in range(int(fps * seconds)):
            image = frame[: stream.height, : stream.width]
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")))
            ok, frame = cap.read()
            if not ok:
                cap.release()
                cap = cv2.VideoCapture(str(source))
                ok, frame = cap.read()
        container.mux(stream.encode())
    cap.release()
    return out


def live_capacity(
    clip: str | Path,
    counts: Sequence[int] = CAMERA_COUNTS,
    *,
    sampling_fps: float = 1.0,
    warmup_s: float = 3.0,
    measure_s: float = 10.0,
    max_age_s: float = MAX_AGE_S,
    batch_size: int | None = None,
    normal: str = NORMAL,
    anomaly: str = ANOMALY,
    threshold: float | None = None,
    stop_after_miss: bool = True,
    on_result: Callable[[LiveResult], None] | None = None,
) -> list[LiveResult]:
    """N simulated cameras (`clip` paced in real time, looping) on one worker, per N.

    Each count gets a fresh worker and fresh analyses of webcam cameras whose source is
    replaced by a `PacedFileSource` (the only bench-only substitution). Frames captured in
    the first `warmup_s` seconds (sources opening) are not counted. A count is held when
    no counted frame was older than `max_age_s` when stored and the slowest camera was
    scored at >= 95 % of `sampling_fps` (`_slowest_rate`). `threshold` None: the default
    one; 0 keeps an incident open on every camera, and with it a clip recording (the worst
    case for the pictures and clips).
    """
    from cameras.models import Camera
    from detection.engine import sources
    from detection.live.publisher import ChannelPublisher
    from detection.models import Analysis
    from detection.worker.loop import Worker

    results = []

    def paced(kind: str, source: str | int, **options: Any) -> sources.LiveSource:
        return sources.PacedFileSource(clip, loop=True, **options)

    for n in counts:
        cameras = [
            Camera.objects.create(name=f"bench cam {i}", kind=Camera.Kind.WEBCAM, source=str(i))
            for i in range(n)
        ]
        for camera in cameras:
            Analysis.objects.create(
                camera=camera,
                name=f"bench live {camera.pk}",
                normal_prompts=normal,
                anomaly_prompts=anomaly,
                sampling_fps=sampling_fps,
                motion_gating=False,  # every due frame is scored: the worst case
                status=Analysis.Status.QUEUED,
                **({} if threshold is None else {"threshold": threshold}),
            )
        publisher = AgePublisher(ChannelPublisher())
        worker = Worker(
            publisher=publisher,
            batch_size=batch_size,
            poll_seconds=0.5,
            max_jobs=max(n, 16),
            open_source=paced,
        )
        started = time.time()
        # Frames captured until the end of the window get `max_age_s` more to be stored.
        timer = threading.Timer(
            warmup_s + measure_s + max_age_s, lambda w=worker: setattr(w, "stopping", True)
        )
        timer.start()
        try:
            worker.run()
        finally:
            timer.cancel()
            worker.stopping = True
        window_start = started + warmup_s
        window_end = started + warmup_s + measure_s
        counted = [
            (pk, captured, age)
            for pk, captured, age in publisher.ages
            if window_start <= captured < window_end
        ]
        ages = sorted(age for _, _, age in counted)
        age_max = ages[-1] if ages else None
        min_rate = _slowest_rate(
            [a.pk for a in Analysis.objects.filter(camera__in=cameras)], counted
        )
        result = LiveResult(
            cameras=n,
            seconds=measure_s,
            scored=len(counted),
            min_rate=min_rate,
            age_p50=_quantile(ages, 0.5),
            age_p95=_quantile(ages, 0.95),
            age_max=age_max,
            held=age_max is not None
            and age_max <= max_age_s
            and min_rate >= MIN_RATE_FRACTION * sampling_fps,
            rss_mib=rss_mib(),
        )
        for camera in cameras:
            camera.delete()
        results.append(result)
        if on_result is not None:
            on_result(result)
        if stop_after_miss and not result.held:
            break
    return results


def _slowest_rate(analyses: Sequence[int], scores: Sequence[tuple[int, float, float]]) -> float:
    """Scored frames/s of the slowest camera: (n - 1) / (last - first capture) each.

    Measured between captures, not as a count over the window, so a worker that keeps
    1 frame/s reads 1.00 whatever the window's phase, and one that falls ~10 % behind
    reads ~0.90.
    """
    times: dict[int, list[float]] = {pk: [] for pk in analyses}
    for pk, captured, _ in scores:
        times.setdefault(pk, []).append(captured)
    rates = [
        (len(t) - 1) / (max(t) - min(t)) if len(t) > 1 and max(t) > min(t) else 0.0
        for t in times.values()
    ]
    return min(rates, default=0.0)


def _loadavg() -> float | None:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def _quantile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    return float(np.quantile(np.asarray(values), q))


# --- the whole benchmark ---------------------------------------------------------------------


def _measure_ceiling(
    loaded: Any,
    batch_size: int,
    matmul_sizes: Sequence[int] | None,
    before: tuple[dict[str, float], float] | None = None,
) -> tuple[dict[str, float], float]:
    """Matmul GFLOP/s per precision (fp32 and the model's) and the encoder's images/s; with
    `before`, the better of the two measurements of each."""
    precisions = {"fp32": torch.float32, loaded.precision: loaded.dtype}
    rates = {
        name: matmul_gflops(dtype, loaded.device, matmul_sizes)
        for name, dtype in precisions.items()
    }
    encoder = encoder_images_per_s(loaded, batch_size)
    if before is not None:
        rates = {name: max(rate, before[0].get(name, 0.0)) for name, rate in rates.items()}
        encoder = max(encoder, before[1])
    return rates, encoder


def _measure_paths(
    proto: Any,
    video: Path,
    normal: str,
    anomaly: str,
    sampling_fps: float,
    spec: ModelSpec,
    batch_size: int,
    repeats: int,
    worker: bool,
    log: Callable[[str], None],
) -> tuple[dict[str, dict[str, Any]], list[float]]:
    """The prototype's loop, analyze_video and the worker, interleaved round by round (a
    neighbour's burst then slows all three alike); per path the median frames/s."""
    runs: dict[str, list[Run]] = {"prototype": [], "analyze_video": [], "worker": []}
    proto_scores: list[float] = []
    for r in range(repeats):
        log(f"round {r + 1}/{repeats}: prototype")
        run, proto_scores = prototype_run(proto, video, normal, anomaly, sampling_fps)
        runs["prototype"].append(run)
        log(f"round {r + 1}/{repeats}: analyze_video")
        runs["analyze_video"].append(
            api_run(video, normal, anomaly, sampling_fps, spec=spec, batch_size=batch_size)
        )
        if worker:
            log(f"round {r + 1}/{repeats}: worker")
            runs["worker"].append(worker_run(video, normal, anomaly, sampling_fps, batch_size))

    proto_fps = statistics.median(r.fps for r in runs["prototype"])
    paths = {}
    for name, done in runs.items():
        if not done:
            continue
        fps = statistics.median(r.fps for r in done)
        paths[name] = {
            "frames": done[0].frames,
            "fps": fps,
            "fps_runs": [r.fps for r in done],
            "seconds_runs": [r.seconds for r in done],
            "speedup": fps / proto_fps if proto_fps else None,
            "ceiling_fraction": None,  # set by the caller, once the ceiling is final
            "precision": done[0].precision,
            "batch_size": 1 if name == "prototype" else batch_size,
        }
    return paths, proto_scores


MODES_LEARN_S = 30.0


def _measure_modes(
    video: Path,
    normal: str,
    anomaly: str,
    sampling_fps: float,
    spec: ModelSpec,
    batch_size: int,
    repeats: int,
    log: Callable[[str], None],
    learn_s: float = MODES_LEARN_S,
) -> dict[str, dict[str, Any]]:
    """analyze_video in each scoring mode, interleaved round by round; normality and
    combined learn the first MODES_LEARN_S seconds. `overhead`: the time per frame beyond
    prompts mode's (the issue's budget for normality: 5 %)."""
    from detection.api import analyze_video

    modes = ("prompts", "normality", "combined")
    runs: dict[str, list[float]] = {mode: [] for mode in modes}
    for r in range(repeats):
        for mode in modes:
            log(f"round {r + 1}/{repeats}: analyze_video --mode {mode}")
            start = time.perf_counter()
            result = analyze_video(
                video,
                normal,
                anomaly,
                sampling_fps,
                spec=spec,
                batch_size=batch_size,
                mode=mode,
                learn_seconds=0 if mode == "prompts" else learn_s,
            )
            seconds = time.perf_counter() - start
            if result["status"] != "Success":
                raise RuntimeError(f"analyze_video --mode {mode}: {result['error_message']}")
            runs[mode].append(len(result["data"]) / seconds)
    base = statistics.median(runs["prompts"])
    out = {}
    for mode, rates in runs.items():
        fps = statistics.median(rates)
        out[mode] = {
            "fps": fps,
            "fps_runs": rates,
            "overhead": base / fps - 1.0,
            "learn_seconds": 0 if mode == "prompts" else learn_s,
        }
    return out


def _measure_live(
    video: Path,
    cameras: Sequence[int],
    camera_clip: str | Path | None,
    *,
    log: Callable[[str], None],
    sampling_fps: float,
    warmup_s: float,
    measure_s: float,
    batch_size: int | None,
    normal: str,
    anomaly: str,
) -> list[LiveResult]:
    """Live capacity on a 25-fps clip made from `video` (unless one is given): each count
    in a worker process of its own (bench/live_worker.py), until one is not held."""
    if not cameras:
        return []
    import subprocess
    import sys
    import tempfile

    from django.conf import settings

    results = []
    with tempfile.TemporaryDirectory(prefix="clipwatch-bench-") as tmp:
        clip = camera_clip or make_camera_clip(video, Path(tmp) / "camera25.mp4")
        log(
            f"live capacity: {', '.join(map(str, cameras))} simulated cameras at "
            f"{sampling_fps:g} frame/s each, each count in a worker process of its own"
        )
        for n in cameras:
            folder = Path(tmp) / f"live-{n}"
            (folder / "media").mkdir(parents=True)
            env = {
                **os.environ,
                "DJANGO_SETTINGS_MODULE": "portal.settings",
                "DATABASE_URL": f"sqlite:///{folder / 'db.sqlite3'}",
                "CHANNELS_DB_PATH": str(folder / "channels.sqlite3"),
                "MEDIA_ROOT": str(folder / "media"),
                # The model the benchmark measures, whatever the environment says.
                **{
                    f"DETECTION_{key}": str(getattr(settings, f"DETECTION_{key}"))
                    for key in ("MODEL", "PRETRAINED", "DEVICE", "PRECISION")
                },
            }
            command = [
                sys.executable, "-m", "bench.live_worker", str(clip), "-n", str(n),
                "--fps", str(sampling_fps), "--warmup", str(warmup_s),
                "--seconds", str(measure_s), "--normal", normal, "--anomaly", anomaly,
            ]  # fmt: skip
            if batch_size:
                command += ["--batch-size", str(batch_size)]
            done = subprocess.run(
                command,
                env=env,
                cwd=Path(__file__).resolve().parent.parent,
                capture_output=True,
                text=True,
                timeout=600 + warmup_s + measure_s,
            )
            if done.returncode != 0:
                tail = done.stderr.strip().splitlines()[-5:]
                raise RuntimeError(f"the {n}-camera worker failed: " + " / ".join(tail))
            result = LiveResult(**json.loads(done.stdout.strip().splitlines()[-1]))
            results.append(result)
            log(
                f"  {n} cameras: {'held' if result.held else 'NOT held'} "
                f"(max age {result.age_max if result.age_max is not None else float('nan'):.2f}"
                f" s, slowest camera {result.min_rate:.2f} frames/s, worker peak RSS "
                f"{result.peak_rss_mib or 0:.0f} MiB)"
            )
            if not result.held:
                break
    return results


def run_benchmark(
    video: str | Path = DEFAULT_VIDEO,
    *,
    sampling_fps: float = 1.0,
    spec: ModelSpec | None = None,
    repeats: int = 2,
    batch_size: int | None = None,
    worker: bool = True,
    cameras: Sequence[int] = CAMERA_COUNTS,
    camera_clip: str | Path | None = None,
    live_measure_s: float = 10.0,
    live_warmup_s: float = 3.0,
    matmul_sizes: Sequence[int] | None = None,
    normal: str = NORMAL,
    anomaly: str = ANOMALY,
    learn_s: float = MODES_LEARN_S,
    log: Callable[[str], None] = lambda _: None,
) -> Report:
    """Everything above, interleaved; `spec` None: the configured model (Django settings)."""
    from detection.api import _configured

    clock = time.perf_counter()
    default_spec, default_batch, _ = _configured()
    spec = spec or default_spec
    batch_size = batch_size or default_batch
    video = Path(video)

    log(f"loading {spec.name} ({spec.pretrained}) for the project and the prototype")
    loaded = load_model(spec)
    proto = prototype_model(spec)

    log("measuring the ceiling and the encoder alone")
    load_start = _loadavg()
    gflops_per_image = model_gflops(loaded)
    rates, encoder = _measure_ceiling(loaded, batch_size, matmul_sizes)
    encoder_fp32 = encoder_images_per_s(proto, 1) if loaded.precision != "fp32" else None

    paths, proto_scores = _measure_paths(
        proto, video, normal, anomaly, sampling_fps, spec, batch_size, repeats, worker, log
    )
    modes = _measure_modes(
        video, normal, anomaly, sampling_fps, spec, batch_size, max(repeats, 3), log, learn_s
    )
    del proto  # done with; the live counts run in worker processes of their own
    gc.collect()
    live = _measure_live(
        video,
        cameras,
        camera_clip,
        sampling_fps=sampling_fps,
        warmup_s=live_warmup_s,
        measure_s=live_measure_s,
        batch_size=batch_size,
        normal=normal,
        anomaly=anomaly,
        log=log,
    )
    held = [r.cameras for r in live if r.held]

    # Measured again at the end, the best kept: a neighbour's burst lowers one measurement,
    # and the ceiling should be the machine's, not its worst moment (same for the encoder).
    log("measuring the ceiling and the encoder again")
    rates, encoder = _measure_ceiling(loaded, batch_size, matmul_sizes, (rates, encoder))
    chosen_rate = rates[loaded.precision]
    ceiling = chosen_rate / gflops_per_image
    for path in paths.values():
        rate = rates.get(path["precision"], chosen_rate)
        path["ceiling_fraction"] = path["fps"] / (rate / gflops_per_image)

    return Report(
        machine={
            **machine_info(),
            "load_average_start": load_start,
            "load_average_end": _loadavg(),
        },
        video={**video_info(video), "sampling_fps": sampling_fps},
        model={
            **loaded.describe(),
            "gflops_per_image": gflops_per_image,
            "gflops_source": "torch.utils.flop_counter.FlopCounterMode, one encode_image",
            "prototype_scores_sample": proto_scores[:3],
        },
        ceiling={
            "matmul_gflops": rates,
            "precision": loaded.precision,
            "images_per_s": ceiling,
        },
        encoder={
            "precision": loaded.precision,
            "batch_size": batch_size,
            "images_per_s": encoder,
            "ceiling_fraction": encoder / ceiling,
            # The prototype's setting (fp32, batch 1), when the project uses another precision.
            "fp32_batch1_images_per_s": encoder_fp32,
        },
        paths=paths,
        live=[asdict(r) for r in live],
        live_held=max(held) if held else (0 if live else None),
        modes=modes,
        peak_rss_mib=peak_rss_mib(),
        seconds=time.perf_counter() - clock,
    )


def video_info(video: Path) -> dict[str, Any]:
    """Facts about the benchmark video, for the report."""
    cap = cv2.VideoCapture(str(video))
    try:
        return {
            "path": str(video),
            "width": int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
            "height": int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
            "fps": float(cap.get(cv2.CAP_PROP_FPS)),
            "frames": int(cap.get(cv2.CAP_PROP_FRAME_COUNT)),
        }
    finally:
        cap.release()


# --- the GPU path: bench/gpu.py -------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m bench.benchmark`: the Django-free throughput benchmark (bench/gpu.py)."""
    from bench.gpu import main as throughput_main

    throughput_main(argv)


# --- output ----------------------------------------------------------------------------------


def format_report(report: Report | dict[str, Any]) -> str:
    """A readable table of the report."""
    r = report.as_dict() if isinstance(report, Report) else report
    m, v, c, e, model = r["machine"], r["video"], r["ceiling"], r["encoder"], r["model"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, bf16 ISA: {m['isa']}"
        f"{', GPU ' + m['cuda'] if m.get('cuda') else ''}; torch {m['torch']} "
        f"({m['torch_threads']} intra-op threads, {m['torch_interop_threads']} inter-op), "
        f"open_clip {m['open_clip']}; load average {_s(m.get('load_average_start'), 1)} "
        f"at the start, {_s(m.get('load_average_end'), 1)} at the end",
        f"Model: {model['model']} ({model['pretrained']}"
        f"{', random weights' if model['random_weights'] else ''}) on {model['device']}, "
        f"{model['precision']}; {model['gflops_per_image']:.2f} GFLOP per image",
        f"Video: {Path(v['path']).name} {v['width']}x{v['height']}, {v['frames']} frames at "
        f"{v['fps']:g} fps, sampled at {v['sampling_fps']:g} frame/s",
    ]
    if model["device"] == "cpu" and m["isa"] == "none":
        lines.append("This CPU has no bf16 matrix instructions (AMX, AVX-512 bf16): fp32 path.")
    busy = max(m.get("load_average_start") or 0, m.get("load_average_end") or 0)
    if m["cores"] and busy > 0.5 * m["cores"] + 2:
        lines.append(
            f"WARNING: the machine was busy (load average {busy:.1f} on {m['cores']} cores): "
            "these figures are low."
        )
    lines += [
        "",
        f"{'path':<16}{'precision':>10}{'batch':>7}{'frames':>8}{'frames/s':>10}"
        f"{'speedup':>9}{'of ceiling*':>13}",
    ]
    for name, p in r["paths"].items():
        lines.append(
            f"{name:<16}{p['precision']:>10}{p['batch_size']:>7}{p['frames']:>8}"
            f"{p['fps']:>10.2f}{p['speedup']:>8.2f}x{p['ceiling_fraction']:>12.0%}"
        )
    rates = ", ".join(f"{k} {val:.0f}" for k, val in c["matmul_gflops"].items())
    lines += [
        f"* of the ceiling of the row's precision (the prototype's: fp32, "
        f"{c['matmul_gflops']['fp32'] / model['gflops_per_image']:.1f} images/s)",
        "",
        f"Ceiling: {c['images_per_s']:.1f} images/s = {c['precision']} matmul "
        f"{c['matmul_gflops'][c['precision']]:.0f} GFLOP/s / {model['gflops_per_image']:.2f} "
        f"GFLOP per image (best measured square matmul, GFLOP/s: {rates})",
        f"Encoder alone: {e['images_per_s']:.1f} images/s ({e['precision']}, batch "
        f"{e['batch_size']}) = {e['ceiling_fraction']:.0%} of the ceiling"
        + (
            f"; fp32 batch 1 (the prototype's setting): {e['fp32_batch1_images_per_s']:.1f}"
            if e.get("fp32_batch1_images_per_s")
            else ""
        ),
    ]
    if r.get("modes"):
        lines += ["", f"{'mode':<12}{'frames/s':>10}{'time per frame vs prompts':>28}"]
        for name, x in r["modes"].items():
            lines.append(f"{name:<12}{x['fps']:>10.2f}{x['overhead']:>+27.1%}")
        lines.append(
            f"(analyze_video; normality and combined learn the first "
            f"{r['modes']['normality']['learn_seconds']:g} s; "
            "medians of interleaved rounds)"
        )
    if r["live"]:
        lines += [
            "",
            f"{'cameras':>8}{'held':>6}{'slowest camera':>16}{'age p50':>9}{'p95':>7}{'max':>7}"
            f"{'peak RSS':>14}",
        ]
        for x in r["live"]:
            lines.append(
                f"{x['cameras']:>8}{('yes' if x['held'] else 'no'):>6}"
                f"{x['min_rate']:>10.2f} fr/s{_s(x['age_p50']):>9}{_s(x['age_p95']):>7}"
                f"{_s(x['age_max']):>7}{x.get('peak_rss_mib') or x.get('rss_mib', 0):>10.0f} MiB"
            )
        lines.append(
            f"Live capacity: {r['live_held']} simulated 25-fps camera(s) scored at "
            f"{v['sampling_fps']:g} frame/s each by one worker, no scored frame older than "
            f"{MAX_AGE_S:g} s when stored (peak RSS: the worker's process alone)"
        )
    lines += [
        "",
        f"Peak RSS: {r['peak_rss_mib']:.0f} MiB (the whole benchmark process, both models); "
        f"took {r['seconds']:.0f} s",
    ]
    return "\n".join(lines)


def _s(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def write_json(report: Report, path: str | Path) -> None:
    Path(path).write_text(json.dumps(report.as_dict(), indent=2, default=str) + "\n")


@contextlib.contextmanager
def temporary_database(folder: Path) -> Iterator[None]:
    """Point Django at fresh, migrated SQLite databases in `folder` for the duration.

    The same machinery as Django's test runner (`create_test_db`), so nothing of the
    configured database is read or written; the channel layer's database too, if used.
    """
    from django.db import connections

    restore = []
    try:
        for alias in ("default", "channels"):
            if alias not in connections.settings:
                continue
            connection = connections[alias]
            if connection.vendor != "sqlite" and alias == "channels":
                continue
            old_name = connection.settings_dict["NAME"]
            test = connection.settings_dict.setdefault("TEST", {})
            old_test = test.get("NAME")
            if connection.vendor == "sqlite":
                test["NAME"] = str(folder / f"bench-{alias}.sqlite3")
            connection.creation.create_test_db(verbosity=0, autoclobber=True, serialize=False)
            restore.append((connection, old_name, test, old_test))
        yield
    finally:
        for connection, old_name, test, old_test in reversed(restore):
            connection.creation.destroy_test_db(old_name, verbosity=0)
            test["NAME"] = old_test


if __name__ == "__main__":
    main()
