"""Viewers benchmark: V live viewers, each with the wall and an analysis page open, on N
daphne processes behind the documented nginx site (docs/performance.md, "Live load").

    python -m bench.viewers [--viewers 1000] [--daphnes 2] [--layer redis|embedded]
                            [--window-s 60] [--clients 2] [--ramp-s S] [--keep DIR]
                            [--database-url URL] [--pool-size 4]

What runs, all on this machine:

- nginx with deploy/nginx/clipwatch.conf (its TLS server, a self-signed certificate for
  `localhost`), the upstream turned into N daphnes on loopback ports, in a temp dir;
- N daphnes, the documented command line (deploy/systemd/clipwatch-web.service:
  `daphne --bind 127.0.0.1 --port P --proxy-headers portal.asgi:application`), with
  production settings (DJANGO_DEBUG=0);
- one `run_detector` (the tests' tiny CLIP model) scoring a live camera at 1 frame/s,
  motion gating off: the tests' MJPEG server (tests/support/streams.py), served from here;
- V viewers, each its own user and session (allowed through a viewer group), each opening
  the wall's socket for the analysis (static/js/dashboard.js opens one per active analysis
  of a card) and the analysis page's (static/js/analysis.js), both `wss://.../ws/analyses/
  <id>/`, in `--clients` asyncio processes (bench/viewer_client.py). Each socket runs the
  tests' client (tests/support/live.py `watch`: it resyncs on a gap as the pages do).

The database is a SQLite file in the temp dir (as in the tests) or PostgreSQL
(`--database-url postgresql://...`: that database is dropped and created afresh, so never
point it at a real one). The layer is Redis (`--redis-url`, db 13 by default, flushed
first) or the embedded one (channels-lite on SQLite, in the temp dir).

Viewers connect one after another over `--ramp-s`, then watch `--window-s` seconds; then
every socket must hold every score stored by the end of the window (with its stored
value) within `--catch-up-s`. Latency runs from the worker's `published_at` to the
client's receipt, per score delivered live (client scheduling included). Prints one JSON
document, then a summary line.

This module is the runner (the processes, nginx, the daphnes, the worker, the report);
bench/viewer_client.py holds the clients and the stored-scores read. The same clients run
tests/live/test_live_load.py (200 viewers, one daphne, one process), which also takes the
process helpers (`process`, `daphne`) from here.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.processes import stop  # noqa: E402
from bench.viewer_client import (  # noqa: E402
    raise_open_files,
    setup_django,
    stored_scores,
    tally,
)
from tests.support.processes import SETTINGS_PREFIXES, cpu_seconds, rss_kib  # noqa: E402

NGINX_SITE = ROOT / "deploy" / "nginx" / "clipwatch.conf"
DEFAULT_DATABASE = "postgresql://postgres@127.0.0.1:5432/viewers_bench"
DEFAULT_REDIS = "redis://127.0.0.1:6379/13"


# --- processes (shared with tests/live/test_live_load.py) -------------------------------


@contextmanager
def process(
    command: list[str], env: Mapping[str, str], log: Path, **popen: Any
) -> Iterator[subprocess.Popen]:
    """A child process that is always stopped: SIGTERM, then SIGKILL after 30 s."""
    with log.open("w") as out:
        popen.setdefault("stdout", subprocess.DEVNULL)
        if popen["stdout"] == subprocess.STDOUT:  # both into the log
            popen["stdout"] = out
        child = subprocess.Popen(command, env=dict(env), cwd=ROOT, stderr=out, **popen)
        try:
            yield child
        finally:
            stop([child], timeout=30, kill_timeout=10)


def daphne(port: int, *options: str) -> list[str]:
    """The documented production command line, on loopback."""
    return [
        sys.executable,
        "-m",
        "daphne",
        "-b",
        "127.0.0.1",
        "-p",
        str(port),
        *options,
        "portal.asgi:application",
    ]


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


# --- the benchmark ----------------------------------------------------------------------


def fresh_postgres(url: str) -> None:
    """Drop and create the database the URL names (the bench's own)."""
    from urllib.parse import urlsplit

    import psycopg

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    assert name and name not in ("test", "postgres"), f"refusing to recreate {name!r}"
    admin = parts._replace(path="/postgres").geturl()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def manage(env: Mapping[str, str], *args: str, timeout: float = 300) -> str:
    done = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args],
        env=dict(env),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode:
        raise SystemExit(f"manage.py {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def nginx_site(ports: list[int], listen: int, cert: Path, key: Path) -> str:
    """deploy/nginx/clipwatch.conf, its upstream N daphnes, its TLS server on `listen`."""
    import re

    def once(text: str, old: str, new: str) -> str:
        assert text.count(old) == 1, f"{NGINX_SITE.name}: expected {old!r} exactly once"
        return text.replace(old, new)

    site = NGINX_SITE.read_text()
    upstream = "\n    ".join(f"server 127.0.0.1:{p};" for p in ports)
    site = once(site, "server 127.0.0.1:8001;", upstream)
    # The plain-http server (a redirect to https) is not needed: drop it.
    site = re.sub(r"server \{\s*listen 80;.*?\n\}\n", "", site, count=1, flags=re.S)
    site = once(site, "listen 443 ssl http2;", f"listen 127.0.0.1:{listen} ssl http2;")
    site = once(site, "listen [::]:443 ssl http2;", "")
    site = re.sub(r"ssl_certificate\s+\S+;", f"ssl_certificate {cert};", site)
    site = re.sub(r"ssl_certificate_key\s+\S+;", f"ssl_certificate_key {key};", site)
    return site


@contextmanager
def nginx(tmp: Path, ports: list[int], sockets: int) -> Iterator[tuple[subprocess.Popen, int]]:
    binary = shutil.which("nginx", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin"]))
    if binary is None or shutil.which("openssl") is None:
        raise SystemExit("nginx and openssl are needed (apt-get install nginx openssl)")
    from tests.support.streams import free_port, wait_for_port

    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    port = free_port()
    (tmp / "site.conf").write_text(nginx_site(ports, port, cert, key))
    temp_paths = "\n".join(
        f"    {kind}_temp_path {tmp / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    user = "user root;" if os.geteuid() == 0 else ""
    # Two connections per proxied socket (client side and upstream side).
    connections = max(1024, sockets * 2 + 256)
    (tmp / "nginx.conf").write_text(
        f"{user}\nworker_processes auto;\nworker_rlimit_nofile {connections * 2};\n"
        f"pid {tmp / 'nginx.pid'};\nerror_log {tmp / 'nginx-error.log'} warn;\n"
        f"events {{ worker_connections {connections}; }}\n"
        f"http {{\n    access_log off;\n{temp_paths}\n"
        f"    include {tmp / 'site.conf'};\n}}\n"
    )
    base = [binary, "-p", str(tmp), "-c", str(tmp / "nginx.conf")]
    checked = subprocess.run([*base, "-t"], capture_output=True, text=True, timeout=30)
    if checked.returncode:
        raise SystemExit(f"nginx -t failed:\n{checked.stderr}")
    server = subprocess.Popen(
        [*base, "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for_port(port)
        yield server, port
    finally:
        stop([server], sig=signal.SIGQUIT, timeout=10, kill_timeout=5)  # nginx: graceful


@dataclass
class Watched:
    """The processes whose CPU and memory the report gives, by role."""

    pids: dict[str, list[int]] = field(default_factory=dict)

    def cpu(self) -> dict[str, float]:
        out = {}
        for role, pids in self.pids.items():
            total = 0.0
            for pid in pids:
                try:
                    total += cpu_seconds(pid)
                except OSError:
                    pass
            out[role] = total
        return out

    def rss_mib(self, role: str) -> float:
        total = 0
        for pid in self.pids.get(role, []):
            try:
                total += rss_kib(pid)["VmRSS"]
            except OSError:
                pass
        return total / 1024


def make_viewers(count: int, env: Mapping[str, str]) -> tuple[list[str], int]:
    """Users allowed through a viewer group, each with a session; the camera's analysis."""
    for key, value in env.items():
        os.environ[key] = value
    setup_django()
    from django.contrib.auth.models import User

    from tests.support.sessions import session_cookie

    users = User.objects.bulk_create(User(username=f"viewer{i}") for i in range(count))
    return [session_cookie(u) for u in users], 0


def bench(args: argparse.Namespace) -> dict[str, Any]:
    from tests.support.model import write_tiny_model

    raise_open_files(args.viewers * 4 + 1024)
    sockets_total = args.viewers * 2
    keep = Path(args.keep) if args.keep else None
    tmp = keep or Path(tempfile.mkdtemp(prefix="viewers-bench-"))
    tmp.mkdir(parents=True, exist_ok=True)
    model = write_tiny_model(tmp)
    env = {k: v for k, v in os.environ.items() if not k.startswith(SETTINGS_PREFIXES)}
    env.update(
        PYTHONPATH=str(ROOT),
        PYTHONUNBUFFERED="1",
        DJANGO_SETTINGS_MODULE="portal.settings",
        DJANGO_DEBUG="0",
        DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
        DJANGO_ALLOWED_HOSTS="localhost,127.0.0.1",
        DJANGO_LOG_LEVEL="WARNING",
        MEDIA_ROOT=str(tmp / "media"),
        TMPDIR=str(tmp),
        DETECTION_MODEL=str(model.config),
        DETECTION_PRETRAINED=str(model.checkpoint),
        DETECTION_DEVICE="cpu",
        DETECTION_PRECISION="fp32",
        DETECTION_BATCH_SIZE="4",
        DETECTION_CAMERA_ALLOWED_NETWORKS="127.0.0.0/8",
    )
    if args.database_url == "sqlite":
        env["DATABASE_URL"] = f"sqlite:///{tmp / 'db.sqlite3'}"
    else:
        fresh_postgres(args.database_url)
        env["DATABASE_URL"] = args.database_url
    if args.layer == "redis":
        import redis

        redis.Redis.from_url(args.redis_url).flushdb()
        env.update(CHANNELS_LAYER="redis", REDIS_URL=args.redis_url)
    else:
        env.update(CHANNELS_LAYER="sqlite", CHANNELS_DB_PATH=str(tmp / "channels.sqlite3"))
    manage(env, "migrate", "--no-input")
    if args.layer != "redis":
        manage(env, "migrate_channels")

    cookies, _ = make_viewers(args.viewers, env)
    from django.contrib.auth.models import Group
    from django.db import connections

    from detection.models import FrameScore
    from tests.support.factories import AnalysisFactory, CameraFactory
    from tests.support.streams import MJPEGServer, free_port, wait_for_port

    wall = Group.objects.create(name="wall")
    from django.contrib.auth.models import User

    wall.user_set.add(*User.objects.filter(username__startswith="viewer"))
    connections.close_all()

    report: dict[str, Any] = {
        "viewers": args.viewers,
        "sockets": sockets_total,
        "daphnes": args.daphnes,
        "layer": args.layer,
        "database": "sqlite" if args.database_url == "sqlite" else "postgresql",
        "window_s": args.window_s,
        "clients": args.clients,
        "cpus": os.cpu_count(),
        "loadavg_before": os.getloadavg(),
    }
    with ExitStack() as stack:
        camera_server = stack.enter_context(MJPEGServer(fps=5))
        camera = CameraFactory(kind="stream", source=camera_server.url, viewer_groups=[wall])
        analysis = AnalysisFactory(
            camera=camera, status="queued", sampling_fps=1.0, motion_gating=False
        )
        analysis_id = analysis.pk
        connections.close_all()
        ports = [free_port() for _ in range(args.daphnes)]
        # As deploy/systemd/clipwatch-web.service runs daphne (PostgreSQL pools; SQLite
        # ignores it); the worker gets none, as in deploy/.
        web_env = {**env, "DATABASE_POOL_SIZE": str(args.pool_size)}
        servers = [
            stack.enter_context(
                process(
                    daphne(p, "--proxy-headers"),
                    web_env,
                    tmp / f"daphne-{p}.log",
                    stdout=subprocess.STDOUT,
                )
            )
            for p in ports
        ]
        detector = [sys.executable, str(ROOT / "manage.py"), "run_detector", "--poll", "0.2"]
        worker = stack.enter_context(process(detector, env, tmp / "worker.log"))
        for p in ports:
            wait_for_port(p, timeout=60)
        proxy, port = stack.enter_context(nginx(tmp, ports, sockets_total))
        watched = Watched(
            {
                "daphne": [s.pid for s in servers],
                "worker": [worker.pid],
                "nginx": [proxy.pid, *children(proxy.pid)],
            }
        )
        deadline = time.monotonic() + 120
        while not FrameScore.objects.filter(analysis_id=analysis_id).exists():
            if worker.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"no first score; worker log in {tmp}")
            time.sleep(0.2)
        connections.close_all()
        time.sleep(2)  # daphne has loaded the app; let the first score settle
        rss_before = {r: round(watched.rss_mib(r), 1) for r in ("daphne", "nginx")}

        # Each viewer: the wall's socket and the analysis page's, both for the analysis.
        url = f"wss://localhost:{port}/ws/analyses/{analysis_id}/"
        sockets = [(url, c) for c in cookies for _ in ("wall", "page")]
        share = -(-len(sockets) // args.clients)
        # A viewer's two sockets stay in one client process (slices of even length).
        share += share % 2
        ramp_s = args.ramp_s if args.ramp_s is not None else max(5.0, args.viewers * 0.1)
        client_env = {**env, "SSL_CERT_FILE": str(tmp / "cert.pem")}
        clients = []
        for n in range(args.clients):
            part = sockets[n * share : (n + 1) * share]
            if not part:
                continue
            child = stack.enter_context(
                process(
                    [sys.executable, "-m", "bench.viewer_client"],
                    client_env,
                    tmp / f"client-{n}.log",
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
            job = {
                "sockets": part,
                "origin": f"https://localhost:{port}",
                "ramp_s": ramp_s,
                "catch_up_s": args.catch_up_s,
                "join_timeout_s": 60 + ramp_s,
            }
            child.stdin.write(json.dumps(job) + "\n")
            child.stdin.flush()
            clients.append(child)
        watched.pids["clients"] = [c.pid for c in clients]
        started = time.monotonic()
        for child in clients:
            line = child.stdout.readline().strip()
            if not line.startswith("joined"):
                raise SystemExit(f"a client failed to join: {line[:2000]} (logs in {tmp})")
        report["join_s"] = round(time.monotonic() - started, 1)
        rss_joined = {r: round(watched.rss_mib(r), 1) for r in ("daphne", "nginx")}
        # Every socket must hold what was stored from here on (a snapshot holds only the
        # analysis's last window, and the first viewers joined long before the last).
        held_from = max((i for i, _ in stored_scores(analysis_id)), default=-1)
        cpu_before = watched.cpu()
        window_start = time.monotonic()
        load_samples = []
        while time.monotonic() < window_start + args.window_s:
            time.sleep(min(5.0, window_start + args.window_s - time.monotonic()))
            load_samples.append(os.getloadavg()[0])
        window_s = time.monotonic() - window_start
        cpu = {k: v - cpu_before[k] for k, v in watched.cpu().items()}
        rss_after = {r: round(watched.rss_mib(r), 1) for r in ("daphne", "nginx", "clients")}
        expected = [(i, v) for i, v in stored_scores(analysis_id) if i >= held_from]
        # Only what was stored by the end of the window: a score stored after this read
        # need not be held by the end of the catch-up.
        for child in clients:
            child.stdin.write(json.dumps(expected) + "\n")
            child.stdin.flush()
        reports: list[dict[str, Any]] = []
        joins = []
        for child in clients:
            line = child.stdout.readline()
            kind, _, body = line.partition(" ")
            if kind != "reports":
                raise SystemExit(f"a client failed: {line[:2000]} (logs in {tmp})")
            data = json.loads(body)
            joins.append(data["join_s"])
            reports.extend(data["reports"])
        alive = {
            "daphnes": all(s.poll() is None for s in servers),
            "worker": worker.poll() is None,
            "nginx": proxy.poll() is None,
        }
    report.update(tally(reports, per_viewer=2))
    since_first = [i for i, _ in expected]
    report.update(
        {
            "scores_stored_by_window_end": len(expected),
            "first_index": since_first[0] if since_first else None,
            "window_measured_s": round(window_s, 1),
            "cpu_percent": {k: round(v / window_s * 100, 1) for k, v in cpu.items()},
            "rss_mib_before": rss_before,
            "rss_mib_joined": rss_joined,
            "rss_mib_end": rss_after,
            "daphne_rss_kib_per_viewer": round(
                (rss_after["daphne"] - rss_before["daphne"]) * 1024 / args.viewers, 1
            ),
            "nginx_rss_kib_per_viewer": round(
                (rss_after["nginx"] - rss_before["nginx"]) * 1024 / args.viewers, 1
            ),
            "loadavg_during": [min(load_samples), max(load_samples)] if load_samples else None,
            "loadavg_after": os.getloadavg(),
            "processes_alive": alive,
            "tmp": str(tmp),
        }
    )
    if not keep:
        shutil.rmtree(tmp, ignore_errors=True)
    return report


def summary_line(r: dict[str, Any]) -> str:
    lat = r.get("latency_ms", {})
    return (
        f"{r['viewers']} viewers ({r['sockets']} sockets), {r['daphnes']} daphne(s), "
        f"{r['layer']} layer: {r['viewers_holding_every_score']} of {r['viewers']} viewers "
        f"hold every one of {r['scores_stored_by_window_end']} scores, "
        f"{r['held_live']} of {r['due_after_join']} live, resyncs {r['resyncs']}, "
        f"{r['sockets_failed']} sockets failed; latency p50 {lat.get('p50')} ms, p95 "
        f"{lat.get('p95')} ms, p99 {lat.get('p99')} ms, max {lat.get('max')} ms over "
        f"{r['deliveries']} deliveries; daphne RSS {r['rss_mib_before']['daphne']} -> "
        f"{r['rss_mib_end']['daphne']} MiB ({r['daphne_rss_kib_per_viewer']} KiB/viewer); "
        f"CPU {r['cpu_percent']}; load {r['loadavg_during']}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.viewers", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--viewers", type=int, default=1000)
    parser.add_argument("--daphnes", type=int, default=2)
    parser.add_argument("--layer", choices=("redis", "embedded"), default="redis")
    parser.add_argument("--window-s", type=float, default=60.0)
    parser.add_argument("--catch-up-s", type=float, default=20.0)
    parser.add_argument("--ramp-s", type=float, default=None, help="default 0.1 s a viewer")
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument(
        "--database-url",
        default="sqlite",
        help=f"sqlite (a file in the temp dir) or e.g. {DEFAULT_DATABASE}",
    )
    parser.add_argument("--redis-url", default=DEFAULT_REDIS)
    parser.add_argument(
        "--pool-size",
        type=int,
        default=4,
        help="DATABASE_POOL_SIZE of the daphnes (4, as deployed; 0: a connection per hop)",
    )
    parser.add_argument("--keep", default=None, help="a folder for the logs, kept")
    args = parser.parse_args(argv)
    # A SIGTERM (`timeout`, Ctrl-C's cousin) still stops every process this started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    report = bench(args)
    print(json.dumps(report, indent=2))
    print(summary_line(report))
    ok = (
        report["viewers_holding_every_score"] == report["viewers"]
        and report.get("latency_ms", {}).get("p95", 1e9) < 250
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
