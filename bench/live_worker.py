"""One live-capacity count in a process of its own: `python -m bench.live_worker CLIP -n N`.

`manage.py bench` runs each simulated-camera count here (bench/benchmark.py `_measure_live`)
so the memory it reports is a worker's alone: the benchmark's own process also holds the
prototype's fp32 model and the other paths' buffers, and its peak says nothing about what
`run_detector` needs. This process is what a worker is (Django, the model, the sources, the
worker loop) plus the measuring; it migrates a fresh SQLite database of its own (settings
from the environment: DATABASE_URL, MEDIA_ROOT, DETECTION_*), loads the model, runs
`live_capacity` for one count and prints the result as JSON on its last line of stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("clip", help="the video each simulated camera plays in real time")
    parser.add_argument("-n", "--cameras", type=int, required=True)
    parser.add_argument("--fps", type=float, default=1.0, help="frames scored per camera per s")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--normal")
    parser.add_argument("--anomaly")
    parser.add_argument(
        "--threshold",
        type=float,
        help="the analyses' threshold; 0 keeps an incident (and its clip) open on every camera",
    )
    args = parser.parse_args(argv)

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    import django

    django.setup()
    from django.core.management import call_command

    from bench import benchmark as bench
    from detection import conf
    from detection.engine import load_model

    for name in ("detection.worker.loop", "detection.engine.loader", "root"):
        logging.getLogger(name).setLevel(logging.WARNING)
    call_command("migrate", verbosity=0)
    if "channels" in django.conf.settings.DATABASES:
        call_command("migrate", database="channels", verbosity=0)
    # Loaded here, before the clock starts: the worker takes it from the loader's cache
    # instead of spending the warm-up loading it.
    load_model(conf.model_spec())
    given = (("normal", args.normal), ("anomaly", args.anomaly), ("threshold", args.threshold))
    options = {k: v for k, v in given if v is not None}
    (result,) = bench.live_capacity(
        args.clip,
        [args.cameras],
        sampling_fps=args.fps,
        warmup_s=args.warmup,
        measure_s=args.seconds,
        batch_size=args.batch_size,
        stop_after_miss=False,
        **options,
    )
    result.peak_rss_mib = bench.peak_rss_mib()
    sys.stdout.write(json.dumps(asdict(result)) + "\n")


if __name__ == "__main__":
    main()
