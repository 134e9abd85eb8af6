"""A real RTSP camera for the tests: GStreamer's gst-rtsp-server serving a generated stream.

Run by Debian's /usr/bin/python3 (it has python3-gi; the project's virtualenv does not),
never imported by the tests: `tests/support/rtsp.py` starts it and stops it.

    /usr/bin/python3 tests/support/rtsp_server.py --port 8554 \\
        --mount /cam=640x360 --mount /cam-sub=320x180 --file /clip=/tmp/clip.avi

Each `--mount PATH=WxH` serves a live test pattern (a ball moving on a blue-grey ground,
so consecutive frames differ and none is black) as H.264 at `--fps` frames per second with
a keyframe every second (a camera's usual GOP). `--file PATH=FILE` serves a video file,
decoded and re-encoded the same way (the -good plugins decode MJPEG AVI, what the tests
write; other codecs need gstreamer1.0-libav). Every client gets a pipeline of its own (see
below), so a file plays from its start.

`--check` only checks that everything is installed. Binds 127.0.0.1 only. Prints
"ready <port>" on stdout once it listens; exits 0 on SIGTERM or SIGINT, and 2 with a
one-line reason when GStreamer or one of its elements is missing.
"""

from __future__ import annotations

import argparse
import signal
import sys

REQUIRED_ELEMENTS = ("videotestsrc", "x264enc", "rtph264pay", "videoconvert", "decodebin")


def encoder(fps: int) -> str:
    # zerolatency: no B-frames or lookahead, so a frame leaves the encoder as soon as it is
    # made; key-int-max=fps: one keyframe a second. ultrafast: cheap on two shared cores.
    return (
        f"x264enc tune=zerolatency speed-preset=ultrafast key-int-max={fps} bitrate=800 "
        "! video/x-h264,profile=baseline ! rtph264pay name=pay0 pt=96 config-interval=1"
    )


def live_launch(width: int, height: int, fps: int) -> str:
    # A ball on a blue-grey ground, not the default black one: the worker skips black
    # frames (a covered lens), and a camera's picture is not black.
    return (
        f"( videotestsrc is-live=true pattern=ball background-color=0xff40607f "
        f"! video/x-raw,format=I420,width={width},height={height},framerate={fps}/1 "
        f"! {encoder(fps)} )"
    )


def file_launch(path: str, fps: int) -> str:
    location = path.replace("\\", "\\\\").replace('"', '\\"')
    return (
        f'( filesrc location="{location}" ! decodebin ! videoconvert ! videorate '
        f"! video/x-raw,format=I420,framerate={fps}/1 ! {encoder(fps)} )"
    )


def size(text: str) -> tuple[int, int]:
    width, _, height = text.partition("x")
    return int(width), int(height)


def mount(text: str) -> tuple[str, str]:
    path, sep, value = text.partition("=")
    if not sep or not path.startswith("/") or not value:
        raise argparse.ArgumentTypeError(f"expected /path=VALUE, got {text!r}")
    return path, value


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--check", action="store_true", help="only check what is installed")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--mount", type=mount, action="append", default=[], help="/path=WxH")
    parser.add_argument("--file", type=mount, action="append", default=[], help="/path=FILE")
    args = parser.parse_args(argv)

    try:
        import gi

        gi.require_version("Gst", "1.0")
        gi.require_version("GstRtspServer", "1.0")
        from gi.repository import GLib, Gst, GstRtspServer
    except (ImportError, ValueError) as error:
        print(f"error: gst-rtsp-server for Python is missing: {error}", file=sys.stderr)
        return 2
    Gst.init(None)
    missing = [name for name in REQUIRED_ELEMENTS if Gst.ElementFactory.find(name) is None]
    if missing:
        print(f"error: GStreamer elements missing: {', '.join(missing)}", file=sys.stderr)
        return 2
    if args.check:
        return 0
    if not args.port:
        parser.error("--port is required")

    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    mounts = server.get_mount_points()
    launches = [(path, live_launch(*size(value), args.fps)) for path, value in args.mount]
    launches += [(path, file_launch(value, args.fps)) for path, value in args.file]
    for path, launch in launches or [("/cam", live_launch(640, 360, args.fps))]:
        factory = GstRtspServer.RTSPMediaFactory()
        factory.set_launch(launch)
        # A pipeline per client, not one shared by all as in a real camera: a shared media
        # is torn down when its last client leaves, and a client that comes back within
        # ~0.5 s (a reconnect, or the first open after the readiness DESCRIBE) would find it
        # still unpreparing and get "503 Service Unavailable".
        factory.set_shared(False)
        mounts.add_factory(path, factory)

    loop = GLib.MainLoop()
    if server.attach(None) == 0:
        print(f"error: cannot listen on 127.0.0.1:{args.port}", file=sys.stderr)
        return 2
    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, loop.quit)
    print(f"ready {server.get_bound_port()}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
