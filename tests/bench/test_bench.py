"""The benchmark (bench/benchmark.py, `manage.py bench`) on a tiny clip with the tiny model.

Only that every field is there and sane: timings are the benchmark's job, not the tests'.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench import benchmark as bench
from tests.support import ROOT
from tests.support.processes import manage

pytestmark = [pytest.mark.usefixtures("tiny_settings"), pytest.mark.slow]

PATHS = ("prototype", "analyze_video", "worker")


@pytest.mark.django_db
def test_it_reports_every_path_side_by_side_with_the_ceiling_and_live_capacity(
    media, make_video, tmp_path
):
    video = make_video("bench.avi", frames=30, fps=10.0)
    messages: list[str] = []
    report = bench.run_benchmark(
        video,
        sampling_fps=2.0,
        repeats=2,
        cameras=(1,),
        live_warmup_s=1.0,
        live_measure_s=2.0,
        matmul_sizes=(128,),
        learn_s=1.0,
        log=messages.append,
    )
    data = report.as_dict()
    assert set(data) == {
        "machine", "video", "model", "ceiling", "encoder", "paths", "live", "live_held",
        "modes", "peak_rss_mib", "seconds",
    }  # fmt: skip
    # Each scoring mode measured three times; the cost of normality is relative to prompts.
    assert set(data["modes"]) == {"prompts", "normality", "combined"}
    for name, mode in data["modes"].items():
        assert len(mode["fps_runs"]) == 3 and mode["fps"] > 0, name
    assert data["modes"]["prompts"]["overhead"] == 0.0

    machine = data["machine"]
    assert machine["isa"] in ("amx", "avx512_bf16", "none")
    assert machine["cores"] >= 1 and machine["torch_threads"] >= 1
    assert machine["load_average_start"] is not None and machine["load_average_end"] is not None

    assert data["video"]["frames"] == 30 and data["video"]["sampling_fps"] == 2.0
    assert data["model"]["precision"] == "fp32" and data["model"]["gflops_per_image"] > 0

    # 30 frames at 10 fps sampled at 2/s: frames 0, 5, ..., 25 on every path, twice each.
    assert set(data["paths"]) == set(PATHS)
    for name in PATHS:
        path = data["paths"][name]
        assert path["frames"] == 6, name
        assert len(path["fps_runs"]) == len(path["seconds_runs"]) == 2
        assert path["fps"] > 0 and path["speedup"] > 0 and path["ceiling_fraction"] > 0
    assert data["paths"]["prototype"]["speedup"] == pytest.approx(1.0)
    assert data["paths"]["prototype"]["batch_size"] == 1
    assert data["paths"]["worker"]["batch_size"] == 4  # DETECTION_BATCH_SIZE of tiny_settings

    ceiling = data["ceiling"]
    assert ceiling["precision"] == "fp32" and ceiling["matmul_gflops"]["fp32"] > 0
    assert ceiling["images_per_s"] == pytest.approx(
        ceiling["matmul_gflops"]["fp32"] / data["model"]["gflops_per_image"]
    )
    assert data["encoder"]["images_per_s"] > 0 and data["encoder"]["ceiling_fraction"] > 0

    [live] = data["live"]
    assert live["cameras"] == 1 and live["seconds"] == 2.0
    assert live["scored"] >= 1 and 0 <= live["age_p50"] <= live["age_max"] < 5
    # Measured in a worker process of its own (bench/live_worker.py): its own memory, not
    # the benchmark's, which also holds the prototype's model.
    assert 0 < live["rss_mib"] <= live["peak_rss_mib"] + 1
    assert any("worker peak RSS" in m for m in messages)
    assert data["live_held"] in (0, 1) and data["live_held"] == int(live["held"])
    assert data["peak_rss_mib"] > 0 and data["seconds"] > 0

    table = bench.format_report(report)
    for word in (*PATHS, "Ceiling", "Encoder alone", "Live capacity", "normality", "Peak RSS"):
        assert word in table
    assert any("live capacity" in m for m in messages)
    bench.write_json(report, tmp_path / "report.json")
    assert json.loads((tmp_path / "report.json").read_text())["paths"]["worker"]["frames"] == 6


def test_the_prototype_loop_scores_the_same_frames_as_analyze_video(make_video):
    from detection.api import analyze_video
    from detection.conf import model_spec

    video = make_video("same.avi", frames=25, fps=10.0, black=(10,))
    proto = bench.prototype_model(model_spec())
    run, scores = bench.prototype_run(proto, video, "a street", "a fire", 1.0)
    result = analyze_video(video, "a street", "a fire", 1.0)
    # Frames 0 and 20 (10 is black, skipped by both): the same samples, scores in (0, 1).
    assert run.frames == len(scores) == len(result["data"]) == 2
    assert all(0 < s < 1 for s in scores)


def test_the_command_prints_the_table_and_writes_json(tiny_model, make_video, tmp_path):
    video = make_video("cli.avi", frames=20, fps=10.0)
    out = tmp_path / "bench.json"
    done = manage(
        "bench", str(video), "--fps", "1", "--repeats", "1", "--cameras", "0",
        "--matmul-sizes", "128", "--json", str(out),
        env={**tiny_model.env, "DATABASE_URL": f"sqlite:///{tmp_path / 'unused.sqlite3'}",
             "MEDIA_ROOT": str(tmp_path / "media")},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "analyze_video" in done.stdout and "worker" in done.stdout
    report = json.loads(out.read_text())
    assert report["paths"]["worker"]["frames"] == 2 and report["live"] == []
    # The benchmark works in temporary databases; the configured one is never created.
    assert not (tmp_path / "unused.sqlite3").exists()


def test_the_command_refuses_a_missing_video(tiny_model, tmp_path):
    done = manage("bench", str(tmp_path / "nope.avi"), env=tiny_model.env)
    assert done.returncode == 2 and "no such video file" in done.stderr


def test_it_reports_a_started_workers_own_peak_memory_not_its_parents():
    # ru_maxrss keeps the parent's high-water mark across fork and exec: the benchmark
    # (2.2 GiB) made every live worker it started report at least that much.
    ballast = bytearray(1 << 30)
    for page in range(0, len(ballast), 4096):
        ballast[page] = 1
    code = "from bench.benchmark import peak_rss_mib; print(peak_rss_mib())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert 0 < float(done.stdout) < 1024 - 256  # its own imports, not the 1 GiB above
    del ballast
