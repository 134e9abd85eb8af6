from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time

import open_clip
import pytest
import torch

from detection.engine import ModelLoadError, ModelSpec, load_model
from detection.engine import device as device_module
from detection.engine import loader as loader_module
from detection.engine.device import (
    MEASURE,
    cpu_bf16_is_faster,
    probe_cpu_precision,
    resolve_device,
    resolve_precision,
)
from tests.support import ROOT


def spec_for(tiny_model, **kw) -> ModelSpec:
    base = dict(
        name=str(tiny_model.config),
        pretrained=str(tiny_model.checkpoint),
        device="cpu",
        precision="fp32",
    )
    return ModelSpec(**{**base, **kw})


def test_it_loads_a_local_checkpoint_through_open_clip(tiny_model):
    loaded = load_model(spec_for(tiny_model))
    saved = torch.load(tiny_model.checkpoint, weights_only=True)
    assert torch.equal(
        loaded.model.state_dict()["visual.conv1.weight"], saved["visual.conv1.weight"]
    )
    assert not loaded.random_weights
    assert loaded.model_logit_scale == pytest.approx(100.0, rel=1e-4)
    assert loaded.describe()["random_weights"] is False


def test_it_caches_one_model_per_spec(tiny_model):
    assert load_model(spec_for(tiny_model)) is load_model(spec_for(tiny_model))
    assert load_model(spec_for(tiny_model)) is not load_model(
        spec_for(tiny_model, precision="bf16")
    )


def test_it_loads_once_when_many_threads_ask_at_once(tiny_model, monkeypatch):
    loader_module.clear_cache()
    calls = []
    real = open_clip.create_model_and_transforms

    def counting(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(open_clip, "create_model_and_transforms", counting)
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(load_model(spec_for(tiny_model))))
        for _ in range(6)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert len({id(r) for r in results}) == 1 and len(results) == 6


def test_it_warns_on_every_load_of_random_weights(tiny_model, caplog):
    loader_module.clear_cache()
    with caplog.at_level(logging.WARNING, logger="detection.engine.loader"):
        first = load_model(spec_for(tiny_model, pretrained="none"))
        loader_module.clear_cache()
        load_model(spec_for(tiny_model, pretrained="none"))
    warnings = [r for r in caplog.records if "RANDOM weights" in r.getMessage()]
    assert len(warnings) == 2
    assert first.random_weights and first.describe()["random_weights"] is True


def test_it_casts_the_whole_model_for_bf16(tiny_model):
    loaded = load_model(spec_for(tiny_model, precision="bf16"))
    assert loaded.dtype == torch.bfloat16
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}


def test_it_hands_back_what_loading_freed(tiny_model, monkeypatch):
    calls = []
    monkeypatch.setattr(loader_module, "release_freed_memory", lambda: calls.append(1))
    monkeypatch.setattr(loader_module, "_cache", {})  # a load, not a cached model
    load_model(spec_for(tiny_model, precision="bf16"))
    assert calls == [1]  # once the fp32 weights were cast away


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_it_returns_freed_memory_the_allocator_kept_to_the_kernel():
    def rss_mib() -> float:
        with open("/proc/self/status") as status:
            line = next(x for x in status if x.startswith("VmRSS:"))
        return int(line.split()[1]) / 1024

    device_module.keep_freed_memory()  # as a worker: freed memory is kept for reuse
    # Many mid-sized blocks, as a model's weights are: freed, they stay in the heap.
    blocks = [torch.ones(256, 1024) for _ in range(400)]  # 400 MiB
    held = rss_mib()
    del blocks
    kept = rss_mib()
    assert device_module.release_freed_memory()
    assert kept - rss_mib() > 200, (held, kept, rss_mib())


def test_it_names_an_unknown_architecture(tiny_model):
    with pytest.raises(ModelLoadError, match=r"'ViT-B-61' is not a model open_clip can build"):
        load_model(spec_for(tiny_model, name="ViT-B-61"))


def test_it_names_a_missing_checkpoint_file(tiny_model, tmp_path):
    missing = tmp_path / "nowhere.pt"
    with pytest.raises(ModelLoadError, match="checkpoint file not found") as err:
        load_model(spec_for(tiny_model, pretrained=str(missing)))
    assert str(missing) in str(err.value)


def test_it_lists_the_known_tags_for_an_unknown_one():
    with pytest.raises(ModelLoadError) as err:
        load_model(ModelSpec("ViT-B-16", "laion9b_nonsense", "cpu", "fp32"))
    assert "laion2b_s34b_b88k" in str(err.value)
    assert "DETECTION_PRETRAINED" in str(err.value)


def test_it_explains_a_corrupt_checkpoint(tiny_model, tmp_path):
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(ModelLoadError, match="could not load") as err:
        load_model(spec_for(tiny_model, pretrained=str(bad)))
    assert "DETECTION_PRETRAINED" in str(err.value)


# The tag as published, and as open_clip also accepts it (and `manage.py check` with it):
# both must reach the download, not stop at the tag.
@pytest.mark.slow
@pytest.mark.parametrize("tag", ["laion2b_s34b_b88k", "LAION2B-S34B-B88K"])
def test_it_explains_a_failed_download_without_a_traceback(tmp_path, tag):
    """The real default weights, with the hub unreachable (offline mode: fails at once)."""
    code = (
        "from detection.engine import ModelSpec, load_model, ModelLoadError\n"
        "try:\n"
        f"    load_model(ModelSpec('ViT-B-16', {tag!r}, 'cpu', 'fp32',"
        f" cache_dir={str(tmp_path)!r}))\n"
        "except ModelLoadError as e:\n"
        "    print(e)\n"
    )
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120, cwd=ROOT
    )
    message = out.stdout.strip()
    assert "could not download the 'laion2b_s34b_b88k' weights of ViT-B-16" in message
    assert "DETECTION_PRETRAINED=/path/to/open_clip_pytorch_model.bin" in message
    assert "huggingface.co/laion/CLIP-ViT-B-16-laion2B-s34B-b88K" in message


def test_it_resolves_devices():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ModelLoadError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="CUDA is not available"):
            resolve_device("cuda:0")


def test_it_picks_precision_by_device_and_processor():
    assert resolve_precision("auto", "cuda") == "fp16"
    # On a CPU with native bf16, auto waits for the model's own probe.
    assert resolve_precision("auto", "cpu") == (MEASURE if cpu_bf16_is_faster() else "fp32")
    assert resolve_precision("fp32", "cuda") == "fp32"
    with pytest.raises(ModelLoadError, match="unknown precision"):
        resolve_precision("int4", "cpu")


# --- auto on a CPU: the model's own image encoder decides --------------------------------------


@pytest.fixture
def probes(monkeypatch):
    """A CPU with native bf16 (the matmul pre-filter passes) and no probe cached yet."""
    monkeypatch.setattr(device_module, "cpu_bf16_is_faster", lambda: True)
    device_module.forget_probes()
    yield
    device_module.forget_probes()
    loader_module.clear_cache()


def fake_timer(fp32_s: float, bf16_s: float, calls: list[torch.dtype] | None = None):
    """Stands in for the timing only: each encoder still runs once, in the dtype given."""

    def timer(runs, budget_s):
        with torch.inference_mode():
            for encoder, pixels in runs:
                encoder(pixels)
        if calls is not None:
            calls.extend(pixels.dtype for _, pixels in runs)
        return [fp32_s if pixels.dtype == torch.float32 else bf16_s for _, pixels in runs]

    return timer


def small_convnet() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3))


def test_it_picks_bf16_when_the_encoder_runs_faster_in_it(probes, caplog):
    encoder = small_convnet()
    with caplog.at_level(logging.INFO, logger="detection.engine.device"):
        probe = probe_cpu_precision("fast-in-bf16", encoder, (16, 16), timer=fake_timer(0.5, 0.2))

    assert (probe.precision, probe.fp32_s, probe.bf16_s) == ("bf16", 0.5, 0.2)
    assert "fast-in-bf16" in caplog.text and "fp32 500.0 ms, bf16 200.0 ms" in caplog.text
    assert "-> bf16" in caplog.text
    assert resolve_precision("auto", "cpu", "fast-in-bf16") == "bf16"


def test_it_keeps_fp32_when_a_convolutional_encoder_is_slower_in_bf16(probes):
    encoder = small_convnet()
    before = {k: v.clone() for k, v in encoder.state_dict().items()}

    probe = probe_cpu_precision("slow-in-bf16", encoder, (16, 16), timer=fake_timer(0.2, 0.5))

    assert probe.precision == "fp32"
    assert resolve_precision("auto", "cpu", "slow-in-bf16") == "fp32"
    # bf16 was timed on a copy: the model itself was never rounded through bf16.
    after = encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) and after[k].dtype == torch.float32 for k in after)


def test_it_wants_a_gain_beyond_the_noise_before_taking_bf16(probes):
    probe = probe_cpu_precision("a-wash", small_convnet(), (16, 16), timer=fake_timer(0.2, 0.195))
    assert probe.precision == "fp32"


def test_it_times_a_close_call_twice(probes):
    calls: list[torch.dtype] = []
    timer = fake_timer(0.2, 0.19, calls)
    probe_cpu_precision("close", small_convnet(), (16, 16), timer=timer)
    assert calls == [torch.float32, torch.bfloat16] * 2


def test_it_probes_each_model_once_per_process(probes):
    calls: list[torch.dtype] = []
    first = probe_cpu_precision("once", small_convnet(), (16, 16), timer=fake_timer(1, 0.1, calls))
    again = probe_cpu_precision("once", small_convnet(), (16, 16), timer=fake_timer(0.1, 1, calls))

    assert again is first and again.precision == "bf16"
    assert calls == [torch.float32, torch.bfloat16]


def test_it_times_nothing_without_native_bf16(monkeypatch):
    monkeypatch.setattr(device_module, "cpu_bf16_is_faster", lambda: False)
    device_module.forget_probes()
    calls: list[torch.dtype] = []
    try:
        probe = probe_cpu_precision(
            "old-cpu", small_convnet(), (16, 16), timer=fake_timer(1, 0, calls)
        )
        assert probe.precision == "fp32" and calls == []
        assert resolve_precision("auto", "cpu", "old-cpu") == "fp32"
    finally:
        device_module.forget_probes()


def test_it_bounds_the_real_timing_of_the_encoders():
    calls: list[str] = []
    first, second = small_convnet(), small_convnet()
    first.register_forward_hook(lambda *args: calls.append("first"))
    second.register_forward_hook(lambda *args: calls.append("second"))
    pixels = torch.randn(2, 3, 16, 16)

    best = device_module.time_encoders([(first, pixels), (second, pixels)], budget_s=10.0)

    assert all(0 < b < 10 for b in best)
    # Warm-up, then rounds in turns: a burst of load slows both alike.
    assert calls == ["first", "second"] * (1 + device_module.PROBE_MAX_ROUNDS)

    calls.clear()
    slow = torch.nn.Sequential(first, SleepFor(0.05))
    device_module.time_encoders([(slow, pixels)], budget_s=0.12)
    # The warm-up and the fewest timed rounds, though the budget ran out after the first.
    assert len(calls) == 1 + device_module.PROBE_MIN_ROUNDS


def test_it_sizes_the_probe_batch_to_the_model(monkeypatch):
    one = torch.randn(1, 3, 16, 16)
    slow = SleepFor(device_module.PROBE_CALL_S * 1.2)
    assert device_module.probe_batch(slow, one) == 1
    # A fast model gets the largest batch (a generous target: a busy machine stays green).
    monkeypatch.setattr(device_module, "PROBE_CALL_S", 10.0)
    assert device_module.probe_batch(small_convnet(), one) == device_module.PROBE_MAX_BATCH


class SleepFor(torch.nn.Module):
    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def forward(self, x):
        time.sleep(self.seconds)
        return x


def test_it_loads_auto_on_a_cpu_at_the_precision_its_probe_chose(tiny_model, probes, monkeypatch):
    calls: list[torch.dtype] = []
    monkeypatch.setattr(device_module, "time_encoders", fake_timer(0.3, 0.1, calls))
    spec = spec_for(tiny_model, precision="auto")

    loaded = load_model(spec)

    assert loaded.precision == "bf16" and loaded.dtype == torch.bfloat16
    assert loaded.model.visual.conv1.weight.dtype == torch.bfloat16
    # Cached: the next auto load (and an explicit bf16 one) is the same model, not re-timed.
    assert load_model(spec) is loaded
    assert load_model(spec_for(tiny_model, precision="bf16")) is loaded
    assert calls == [torch.float32, torch.bfloat16]


def test_it_probes_the_real_tiny_model_quickly(tiny_model, probes):
    started = time.perf_counter()
    loaded = load_model(spec_for(tiny_model, precision="auto"))
    assert loaded.precision in ("fp32", "bf16")
    assert device_module.measured_cpu_precision("tiny-clip") == loaded.precision
    assert time.perf_counter() - started < 10


# The hub's own stderr handler, and what route_hub_logs_through_root does with it, in a fresh
# interpreter (pytest's own logging set-up would blur "no handlers on the root").
HUB_HANDLERS = """
import logging
from huggingface_hub import hf_hub_download  # as open_clip does: adds the hub's handler
from detection.engine.weights import route_hub_logs_through_root
hub = logging.getLogger("huggingface_hub")
route_hub_logs_through_root()
bare = len(hub.handlers)
logging.basicConfig()  # what Django's LOGGING amounts to: handlers on the root
route_hub_logs_through_root()
print(bare, len(hub.handlers))
"""


def test_it_lets_hub_warnings_through_the_root_handlers_once_and_keeps_them_in_bare_scripts():
    done = subprocess.run(
        [sys.executable, "-c", HUB_HANDLERS], cwd=ROOT, capture_output=True, text=True, timeout=60
    )

    assert done.returncode == 0, done.stderr
    # A bare script (the API without logging set up) keeps the hub's handler: its warnings
    # still show. With handlers on the root, the hub's goes: each warning is printed once.
    assert done.stdout.split() == ["1", "0"]
