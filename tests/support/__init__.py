"""What the tests share, in one place; fixtures live in tests/conftest.py.

- `factories`: factory-boy factories for the models.
- `sessions`: logging a user in: a test client, or the session cookie a browser would hold.
- `waiting`: `wait_until` / `wait_until_async`, the one way to wait for a condition.
- `html`: parse a page and find elements by tag and attributes (no whitespace matching).
- `media`: synthetic frames and video files.
- `model`: the tiny CLIP checkpoint the tests load instead of real weights.
- `processes`: the project's own processes (manage.py, daphne, run_detector), started
  and stopped as an operator would, and what /proc says about them.
- `services`: which real services (Redis, PostgreSQL) this run may use.
- `streams`: local camera doubles (MJPEG over HTTP, a server that stalls), free ports.
- `rtsp`: a real RTSP camera (gst-rtsp-server in a subprocess: rtsp_server.py).
- `live`: clients of the live socket (a resyncing watcher, static/js/live.js under Node).
- `worker`: a publisher that records, file analyses, the indices a run stores, fast live
  source options and `run_until` (ticking a worker until a condition holds).
- `sources`: a status callback that records, for live frame sources.
- `dns`: name resolution answered from a table.
- `chat`: a local OpenAI-compatible chat-completions server (the prompt assistant).
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository
