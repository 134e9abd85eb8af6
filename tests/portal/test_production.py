"""Production settings over real HTTP, and the deploy/ files checked against the project.

A real daphne runs the command line of deploy/systemd/clipwatch-web.service (on a free
port) with DJANGO_DEBUG=false, a strong secret key, allowed hosts and CSRF trusted
origins, after a real `collectstatic`; requests go over TCP, so the tests see what nginx
and browsers see. Where nginx and openssl are installed, deploy/nginx/clipwatch.conf itself
is put in front of that daphne with a throw-away certificate: TLS, X-Forwarded-Proto,
websocket upgrade and the 413 for oversized uploads, through the example file.
"""

from __future__ import annotations

import ast
import asyncio
import gzip
import http.client
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import urlencode

import pytest
import websockets

from tests.support import ROOT
from tests.support.model import cache_default_weights
from tests.support.processes import SETTINGS_PREFIXES, manage
from tests.support.streams import free_port, wait_for_port
from tests.support.waiting import wait_until

DEPLOY = ROOT / "deploy"
WEB_UNIT = DEPLOY / "systemd" / "clipwatch-web.service"
WORKER_UNIT = DEPLOY / "systemd" / "clipwatch-worker@.service"
GPU_DROPIN = DEPLOY / "systemd" / "clipwatch-worker@.service.d" / "gpu.conf"
PROCFILE = DEPLOY / "Procfile"
NGINX_SITE = DEPLOY / "nginx" / "clipwatch.conf"
ENV_EXAMPLE = DEPLOY / "clipwatch.env.example"

HOST = "watch.example.com"
# The second origin is trusted only through DJANGO_CSRF_TRUSTED_ORIGINS (another host).
TRUSTED_ORIGINS = f"https://{HOST},https://console.example.org"
MIB = 1024 * 1024


# --- what the project reads -----------------------------------------------------------

_ENV_READERS = {
    "get_bool",
    "get_int",
    "get_float",
    "get_str",
    "get_optional_str",
    "get_list",
    "get_path",
    "get_paths",
    "get_networks",
}


def _project_sources() -> Iterator[Path]:
    for package in ("portal", "cameras", "detection"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" not in path.parts:
                yield path


def variables_read() -> dict[str, object]:
    """Every environment variable the project reads, with its default where it is literal.

    Read from the code rather than a list kept by hand: the readers of portal/env.py,
    `os.environ.get`/`os.getenv`/`os.environ[...]` with a constant (or a module constant).
    """
    found: dict[str, object] = {}
    for path in _project_sources():
        tree = ast.parse(path.read_text(), str(path))
        constants = {
            target.id: node.value.value
            for node in tree.body
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
            for target in node.targets
            if isinstance(target, ast.Name) and isinstance(node.value.value, str)
        }

        def name_of(arg: ast.expr, consts: dict[str, object] = constants) -> str | None:
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                return arg.value
            if isinstance(arg, ast.Name) and isinstance(consts.get(arg.id), str):
                return str(consts[arg.id])
            return None

        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and node.args:
                func = ast.unparse(node.func)
                is_reader = func.split(".")[-1] in _ENV_READERS
                if is_reader or func in ("os.environ.get", "os.getenv"):
                    name = name_of(node.args[0])
                    if name is None:
                        continue
                    default = None
                    if is_reader and len(node.args) > 1:
                        try:
                            default = ast.literal_eval(node.args[1])
                        except ValueError:
                            default = None  # computed (a path under BASE_DIR)
                    if found.get(name) is None:
                        found[name] = default
            elif isinstance(node, ast.Subscript) and ast.unparse(node.value) == "os.environ":
                name = name_of(node.slice)
                if name is not None:
                    found.setdefault(name, None)
    return found


def env_example() -> dict[str, str]:
    """KEY=value lines of the example, commented-out ones included (with their value)."""
    entries: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = re.fullmatch(r"#?\s*([A-Z][A-Z0-9_]*)=(\S*)", line.strip())
        if match:
            entries[match.group(1)] = match.group(2)
    return entries


def active_env_example() -> dict[str, str]:
    """Only the lines that are not commented out: what the services get."""
    lines = ENV_EXAMPLE.read_text().splitlines()
    pairs = (line.split("=", 1) for line in lines if line and not line.startswith("#"))
    return {key: value for key, value in pairs}


def unit_values(path: Path, key: str) -> list[str]:
    """All values of `key=` in a systemd unit or drop-in, in order."""
    return [
        line.split("=", 1)[1]
        for line in path.read_text().splitlines()
        if line.startswith(f"{key}=")
    ]


def exec_start(path: Path) -> list[str]:
    """The effective ExecStart= (the last one: a drop-in resets it with an empty line)."""
    return shlex.split(unit_values(path, "ExecStart")[-1])


def procfile() -> dict[str, list[str]]:
    entries = {}
    for line in PROCFILE.read_text().splitlines():
        match = re.fullmatch(r"([A-Za-z0-9_-]+):\s*(.+)", line)
        if match:
            entries[match.group(1)] = shlex.split(match.group(2))
    return entries


def nginx_directive(name: str) -> list[str]:
    text = re.sub(r"#.*", "", NGINX_SITE.read_text())
    pattern = rf"^\s*{name}\s+([^;{{}}\n]+);"
    return [m.strip() for m in re.findall(pattern, text, re.MULTILINE)]


# --- a production daphne --------------------------------------------------------------


@dataclass
class Production:
    port: int
    stdout: Path
    stderr: Path
    static_root: Path
    password: str
    analysis_id: int

    def log(self) -> str:
        return self.stdout.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 15) -> None:
        wait_until(
            lambda: text in self.log(),
            timeout,
            f"{text!r} on daphne's stdout",
            lambda: (
                f"stdout:\n{self.log()[-3000:]}\n"
                f"stderr:\n{self.stderr.read_text(errors='replace')[-3000:]}"
            ),
            every=0.1,
        )


def _manage(args: list[str], env: dict[str, str]) -> str:
    done = manage(*args, env=env)
    assert done.returncode == 0, f"manage.py {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


# What an operator runs once (migrate, collectstatic, ensure_admin) plus an analysis for the
# socket, in one process: each manage.py start imports torch for the system checks, and
# `check --deploy` has its own test below.
_SETUP = """
from django.core.management import call_command
from cameras.models import Camera
from detection.models import Analysis
call_command("migrate", interactive=False, verbosity=0)
call_command("collectstatic", interactive=False, verbosity=0)
call_command("ensure_admin")
camera = Camera.objects.create(name="Gate", kind="file", source="/srv/videos/gate.mp4")
analysis = Analysis.objects.create(
    camera=camera, name="Gate", normal_prompts="a gate", anomaly_prompts="a fire",
    status="completed",
)
print("analysis", analysis.pk)
"""


@pytest.fixture(scope="module")
def production(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Production]:
    tmp = tmp_path_factory.mktemp("production")
    static_root = tmp / "static"
    # settings.py collects into the checkout's staticfiles/; other test runs may share the
    # checkout, so only STATIC_ROOT moves, through a settings module that imports the rest.
    (tmp / "production_settings.py").write_text(
        f"from portal.settings import *  # noqa: F403\nSTATIC_ROOT = {str(static_root)!r}\n"
    )
    password = secrets.token_urlsafe(24)
    env = {k: v for k, v in os.environ.items() if not k.startswith(SETTINGS_PREFIXES)}
    env.update(
        PYTHONPATH=os.pathsep.join([str(tmp), str(ROOT)]),
        DJANGO_SETTINGS_MODULE="production_settings",
        DJANGO_DEBUG="0",
        DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
        DJANGO_ALLOWED_HOSTS=f"{HOST},localhost",
        DJANGO_CSRF_TRUSTED_ORIGINS=TRUSTED_ORIGINS,
        DJANGO_SUPERUSER_PASSWORD=password,
        DATABASE_URL=f"sqlite:///{tmp / 'db.sqlite3'}",
        MEDIA_ROOT=str(tmp / "media"),
        # One process: snapshots come from the database; delivery between processes is
        # test_live_cross_process.py's subject.
        CHANNELS_LAYER="memory",
        DETECTION_PRETRAINED="none",
    )
    for line in unit_values(WEB_UNIT, "Environment"):
        key, value = line.split("=", 1)
        env[key] = value
    env["TMPDIR"] = str(tmp)
    created = _manage(["shell", "--no-imports", "-c", _SETUP], env)
    analysis_id = int(re.findall(r"^analysis (\d+)$", created, re.MULTILINE)[-1])

    # The unit's own command line, with the venv's daphne and a free port.
    command = exec_start(WEB_UNIT)
    port = free_port()
    command[command.index("--port") + 1] = str(port)
    command[:1] = [sys.executable, "-m", "daphne"]
    stdout, stderr = tmp / "daphne.out", tmp / "daphne.err"
    with stdout.open("w") as out, stderr.open("w") as err:
        server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=err)
    try:
        try:
            wait_for_port(port, timeout=60)
        except AssertionError:
            raise AssertionError(f"daphne did not start:\n{stderr.read_text()}") from None
        yield Production(port, stdout, stderr, static_root, password, analysis_id)
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=5)


@dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def cookies(self) -> SimpleCookie:
        jar: SimpleCookie = SimpleCookie()
        for header in self.headers.get_all("Set-Cookie") or []:
            jar.load(header)
        return jar


def fetch(
    port: int,
    method: str,
    path: str,
    *,
    https: bool = True,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> Response:
    """One request to daphne as nginx would send it: `https` adds X-Forwarded-Proto."""
    all_headers = {"Host": HOST, **({"X-Forwarded-Proto": "https"} if https else {})}
    all_headers.update(headers or {})
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=all_headers)
        response = connection.getresponse()
        return Response(response.status, response.headers, response.read())
    finally:
        connection.close()


def csrf_from(page: bytes) -> str:
    match = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    assert match, "no CSRF token on the login page"
    return match.group(1).decode()


# --- production settings over HTTP ------------------------------------------------------


@pytest.mark.slow
def test_it_serves_hashed_static_files_with_a_far_future_cache_header(production):
    manifest = json.loads((production.static_root / "staticfiles.json").read_text())["paths"]
    hashed = manifest["vendor/chart.umd.min.js"]
    assert hashed != "vendor/chart.umd.min.js"
    source = (ROOT / "static" / "vendor" / "chart.umd.min.js").read_bytes()

    response = fetch(
        production.port, "GET", f"/static/{hashed}", headers={"Accept-Encoding": "gzip"}
    )
    assert response.status == 200
    cache = response.headers["Cache-Control"]
    assert "immutable" in cache and "max-age=315360000" in cache, cache
    assert response.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(response.body) == source

    # Pages link the hashed names, so a new release never meets a stale cached copy.
    login = fetch(production.port, "GET", "/accounts/login/")
    assert f"/static/{manifest['css/app.css']}".encode() in login.body

    # The unhashed name still answers, but may only be cached briefly.
    plain = fetch(production.port, "GET", "/static/vendor/chart.umd.min.js")
    assert plain.status == 200 and plain.body == source
    assert "immutable" not in plain.headers["Cache-Control"]


@pytest.mark.slow
def test_it_redirects_plain_http_to_https(production):
    response = fetch(production.port, "GET", "/accounts/login/?next=/", https=False)
    assert response.status == 301
    assert response.headers["Location"] == f"https://{HOST}/accounts/login/?next=/"
    assert response.headers["Strict-Transport-Security"] is None  # only sent over https


@pytest.mark.slow
def test_it_trusts_x_forwarded_proto_and_sends_hsts(production):
    response = fetch(production.port, "GET", "/accounts/login/")
    assert response.status == 200
    assert (
        response.headers["Strict-Transport-Security"]
        == "max-age=31536000; includeSubDomains; preload"
    )
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Referrer-Policy"] == "same-origin"


def post_login(production, origin: str, csrf_cookie: str, csrf_field: str):
    """The admin's login form as a browser at `origin` posts it."""
    body = urlencode(
        {"username": "admin", "password": production.password, "csrfmiddlewaretoken": csrf_field}
    ).encode()
    headers = {
        "Cookie": f"csrftoken={csrf_cookie}",
        "Origin": origin,
        "Content-Type": "application/x-www-form-urlencoded",
    }
    return fetch(production.port, "POST", "/accounts/login/", headers=headers, body=body)


@pytest.mark.slow
@pytest.mark.parametrize(
    "origin",
    [f"https://{HOST}", "https://console.example.org"],
    ids=["same-origin", "trusted-origin"],
)
def test_it_sets_secure_cookies_at_login(production, origin):
    page = fetch(production.port, "GET", "/accounts/login/")
    csrf = page.cookies()["csrftoken"]
    assert csrf["secure"], "the CSRF cookie must be Secure"
    response = post_login(production, origin, csrf.value, csrf_from(page.body))
    assert response.status == 302, response.body[:500]
    assert response.headers["Location"] == "/"
    cookies = response.cookies()
    session = cookies["sessionid"]
    assert session["secure"] and session["httponly"], str(session)
    assert session["samesite"] == "Lax"
    assert cookies["csrftoken"]["secure"]  # rotated at login, still Secure


@pytest.mark.slow
def test_it_refuses_a_login_from_an_untrusted_origin_and_logs_it_to_stdout(production):
    page = fetch(production.port, "GET", "/accounts/login/")
    token = page.cookies()["csrftoken"].value
    response = post_login(production, "https://evil.example.net", token, "x")
    assert response.status == 403
    assert "sessionid" not in response.cookies()
    production.wait_for_log(
        "WARNING django.security.csrf: Forbidden (Origin checking failed - "
        "https://evil.example.net does not match any trusted origins.): /accounts/login/"
    )


@pytest.mark.slow
def test_it_logs_to_stdout(production):
    path = f"/no-such-page-{secrets.token_hex(4)}/"
    assert fetch(production.port, "GET", path).status == 404
    production.wait_for_log(f"WARNING django.request: Not Found: {path}")
    assert path not in production.stderr.read_text(errors="replace")


# --- nginx in front: the example site config ----------------------------------------------


@dataclass
class Nginx:
    https_port: int
    http_port: int
    cafile: Path
    max_body: int


# django-axes' limit as the production settings leave it (DJANGO_LOGIN_FAILURE_LIMIT unset).
LOGIN_FAILURE_LIMIT = 5


def _nginx_binary() -> str | None:
    return shutil.which("nginx", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin"]))


def _replace_once(text: str, old: str, new: str) -> str:
    # A changed example file must fail here, not quietly test something else.
    assert text.count(old) == 1, f"{NGINX_SITE.name}: expected {old!r} exactly once"
    return text.replace(old, new)


@pytest.fixture(scope="module")
def nginx(production, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nginx]:
    binary = _nginx_binary()
    if binary is None or shutil.which("openssl") is None:
        pytest.skip("nginx and openssl are needed (apt-get install nginx openssl)")
    tmp = tmp_path_factory.mktemp("nginx")
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
    https_port, http_port = free_port(), free_port()
    site = NGINX_SITE.read_text()
    site = _replace_once(site, "server 127.0.0.1:8001;", f"server 127.0.0.1:{production.port};")
    site = _replace_once(site, "listen 80;", f"listen 127.0.0.1:{http_port};")
    site = _replace_once(site, "listen 443 ssl http2;", f"listen 127.0.0.1:{https_port} ssl http2;")
    site = _replace_once(site, "listen [::]:80;", "")
    site = _replace_once(site, "listen [::]:443 ssl http2;", "")
    site = re.sub(r"ssl_certificate\s+\S+;", f"ssl_certificate {cert};", site)
    site = re.sub(r"ssl_certificate_key\s+\S+;", f"ssl_certificate_key {key};", site)
    (tmp / "site.conf").write_text(site)
    temp_paths = "\n".join(
        f"    {kind}_temp_path {tmp / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    # As root, nginx's workers would run as `nobody`, who cannot enter pytest's tmp dirs.
    user = "user root;" if os.geteuid() == 0 else ""
    (tmp / "nginx.conf").write_text(
        f"{user}\nworker_processes 1;\npid {tmp / 'nginx.pid'};\n"
        f"error_log {tmp / 'error.log'} warn;\nevents {{ worker_connections 64; }}\n"
        f"http {{\n    access_log {tmp / 'access.log'};\n{temp_paths}\n"
        f"    include {tmp / 'site.conf'};\n}}\n"
    )
    base = [binary, "-p", str(tmp), "-c", str(tmp / "nginx.conf")]
    checked = subprocess.run([*base, "-t"], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stderr
    server = subprocess.Popen(
        [*base, "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        wait_for_port(https_port)
        (max_body,) = nginx_directive("client_max_body_size")
        yield Nginx(https_port, http_port, cert, int(max_body.rstrip("m")) * MIB)
    finally:
        server.send_signal(signal.SIGQUIT)  # graceful: finish open requests, then exit
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=5)


def _tls(nginx: Nginx) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(nginx.cafile))


def via_nginx(
    nginx: Nginx, method: str, path: str, *, headers: dict[str, str] | None = None, body=None
) -> Response:
    connection = http.client.HTTPSConnection(
        "localhost", nginx.https_port, context=_tls(nginx), timeout=30
    )
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return Response(response.status, response.headers, response.read())
    finally:
        connection.close()


def post_login_via_nginx(
    nginx: Nginx, username: str, password: str, headers: dict[str, str] | None = None
) -> Response:
    """The login form through nginx, as a browser posts it (after fetching it)."""
    origin = f"https://localhost:{nginx.https_port}"
    page = via_nginx(nginx, "GET", "/accounts/login/")
    csrf = page.cookies()["csrftoken"].value
    body = urlencode(
        {"username": username, "password": password, "csrfmiddlewaretoken": csrf_from(page.body)}
    )
    return via_nginx(
        nginx,
        "POST",
        "/accounts/login/",
        headers={
            "Cookie": f"csrftoken={csrf}",
            "Origin": origin,
            "Referer": f"{origin}/accounts/login/",
            "Content-Type": "application/x-www-form-urlencoded",
            **(headers or {}),
        },
        body=body.encode(),
    )


def login_via_nginx(production: Production, nginx: Nginx) -> str:
    """Log in through nginx as a browser does; returns the session cookie."""
    response = post_login_via_nginx(nginx, "admin", production.password)
    assert response.status == 302, response.body[:500]
    return response.cookies()["sessionid"].value


@pytest.mark.slow
def test_it_serves_https_through_the_example_nginx_site(production, nginx):
    response = via_nginx(nginx, "GET", "/accounts/login/")
    # 200, not a redirect loop: nginx told daphne the request came in over https.
    assert response.status == 200
    assert response.headers["Server"].startswith("nginx")
    assert response.headers["Strict-Transport-Security"].startswith("max-age=31536000")

    plain = http.client.HTTPConnection("127.0.0.1", nginx.http_port, timeout=30)
    try:
        plain.request("GET", "/accounts/login/", headers={"Host": "localhost"})
        redirect = plain.getresponse()
        assert redirect.status == 301
        assert redirect.headers["Location"] == "https://localhost/accounts/login/"
    finally:
        plain.close()


@pytest.mark.slow
def test_it_carries_the_live_websocket_through_the_example_nginx_site(production, nginx):
    session = login_via_nginx(production, nginx)

    async def first_message() -> dict:
        url = f"wss://localhost:{nginx.https_port}/ws/analyses/{production.analysis_id}/"
        async with websockets.connect(
            url,
            ssl=_tls(nginx),
            origin=f"https://localhost:{nginx.https_port}",
            additional_headers={"Cookie": f"sessionid={session}"},
            open_timeout=15,
        ) as socket:
            return json.loads(await asyncio.wait_for(socket.recv(), timeout=15))

    message = asyncio.run(first_message())
    assert message["type"] == "snapshot"
    assert message["analysis"] == production.analysis_id


@pytest.mark.slow
def test_it_locks_out_a_password_guesser_through_nginx_whatever_address_it_claims(
    production, nginx
):
    # daphne takes the client's address from the first entry of X-Forwarded-For; were
    # nginx to append to the header, that entry would be the client's own choice and each
    # guess would count against another address, never reaching the lockout.
    username = f"guessed-{secrets.token_hex(4)}"  # its lock leaves the admin's logins alone
    statuses = []
    for attempt in range(LOGIN_FAILURE_LIMIT + 1):
        claimed = {"X-Forwarded-For": f"198.51.100.{attempt + 1}"}
        response = post_login_via_nginx(nginx, username, "wrong", claimed)
        statuses.append(response.status)
    # The form again for each wrong password, then the lockout from the limit on.
    assert statuses[0] == 200 and 429 in statuses, statuses
    first = statuses.index(429)
    assert first <= LOGIN_FAILURE_LIMIT and set(statuses[first:]) == {429}, statuses
    assert b"Too many failed logins" in response.body


@pytest.mark.slow
def test_it_refuses_an_oversized_upload_in_nginx_before_daphne_sees_it(production, nginx):
    session = login_via_nginx(production, nginx)
    connection = http.client.HTTPSConnection(
        "localhost", nginx.https_port, context=_tls(nginx), timeout=30
    )
    try:
        # Headers only: nginx answers from Content-Length, so no gigabytes are sent.
        connection.putrequest("POST", "/upload/")
        connection.putheader("Cookie", f"sessionid={session}")
        connection.putheader("Content-Type", "multipart/form-data; boundary=x")
        connection.putheader("Content-Length", str(nginx.max_body + 1))
        connection.endheaders()
        response = connection.getresponse()
        assert response.status == 413
        assert b"nginx" in response.read()
    finally:
        connection.close()
    assert "POST /upload/" not in production.log()  # daphne's access log


# --- the deploy/ files against the project ------------------------------------------------


def test_it_lists_only_variables_the_project_reads_in_the_env_example():
    read = variables_read()
    assert "DJANGO_SECRET_KEY" in read and "DJANGO_SUPERUSER_PASSWORD" in read  # the scan works
    example = env_example()
    assert sorted(set(example) - set(read)) == [], "the example names unknown variables"
    assert sorted(set(read) - set(example)) == [], "the example misses variables"


@pytest.mark.slow
def test_it_passes_the_deploy_checks_with_the_env_example(tmp_path):
    values = active_env_example()
    assert values["DJANGO_DEBUG"] == "false"
    assert values["DJANGO_SECRET_KEY"] == "", "the example must not ship a secret key"
    env = {k: v for k, v in os.environ.items() if not k.startswith(SETTINGS_PREFIXES)}
    env.update(values)
    # Only what differs per machine; every other value is the example's own.
    env.update(
        DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        MEDIA_ROOT=str(tmp_path / "media"),
        DETECTION_VIDEO_DIRS=str(tmp_path),
        DETECTION_CACHE_DIR=str(tmp_path / "models"),
    )
    # A deployed box has its weights (this one may have no internet: detection.W004).
    cache_default_weights(tmp_path / "models")
    done = manage("check", "--deploy", "--fail-level", "WARNING", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no issues" in done.stdout


def _daphne_args(argv: list[str]):
    from daphne.cli import CommandLineInterface

    assert Path(argv[0]).name == "daphne", argv
    return CommandLineInterface().parser.parse_args(argv[1:])


def _manage_command(argv: list[str]) -> None:
    """argv is `python manage.py NAME ARGS`: NAME must exist and accept ARGS."""
    from django.core.management import get_commands, load_command_class

    assert Path(argv[0]).name == "python" and argv[1] == "manage.py", argv
    name = argv[2]
    commands = get_commands()
    assert name in commands, f"no management command {name!r}"
    command = load_command_class(commands[name], name)
    command.create_parser("manage.py", name).parse_args(argv[3:])


def _env_prefix(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """`env NAME=VALUE ... command` (a Procfile line's way to set variables): both parts."""
    if argv[:1] != ["env"]:
        return {}, argv
    names = [arg for arg in argv[1:] if "=" in arg and not arg.startswith("-")]
    return dict(arg.split("=", 1) for arg in names), argv[1 + len(names) :]


def test_it_starts_only_commands_that_exist():
    web_env, web_line = _env_prefix(procfile()["web"])
    web_commands = [exec_start(WEB_UNIT), web_line]
    # The web process pools its PostgreSQL connections; the workers refuse a pool.
    assert web_env == {"DATABASE_POOL_SIZE": "4"}
    assert "DATABASE_POOL_SIZE=4" in unit_values(WEB_UNIT, "Environment")
    assert not any("DATABASE_POOL_SIZE" in line for line in unit_values(WORKER_UNIT, "Environment"))
    assert "DATABASE_POOL_SIZE" not in active_env_example()
    ports = set()
    for argv in web_commands:
        args = _daphne_args(argv)
        assert args.application == "portal.asgi:application"
        assert args.host == "127.0.0.1", "daphne must only listen on loopback, behind nginx"
        assert args.proxy_headers
        ports.add(args.port)
    (upstream,) = nginx_directive("server")
    assert ports == {int(upstream.rsplit(":", 1)[1])}, "nginx must proxy to daphne's port"

    worker_commands = [exec_start(WORKER_UNIT), procfile()["worker"]]
    worker_commands.append([arg.replace("%i", "0") for arg in exec_start(GPU_DROPIN)])
    for argv in worker_commands:
        _manage_command(argv)
        assert argv[2] == "run_detector"
    assert unit_values(GPU_DROPIN, "ExecStart")[0] == "", "a drop-in must reset ExecStart"
    assert set(procfile()) == {"web", "worker"}


def test_it_keeps_the_upload_limits_of_nginx_and_the_portal_together():
    default_mb = variables_read()["DETECTION_MAX_UPLOAD_MB"]
    assert isinstance(default_mb, int)
    assert env_example()["DETECTION_MAX_UPLOAD_MB"] == str(default_mb)
    # One MiB more than the file limit, for the form's other fields.
    assert nginx_directive("client_max_body_size") == [f"{default_mb + 1}m"]
    headers = nginx_directive("proxy_set_header")
    assert "X-Forwarded-Proto $scheme" in headers
    assert "Upgrade $http_upgrade" in headers


def test_it_verifies_the_systemd_units(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    venv_bin = Path(sys.executable).parent
    dropins = tmp_path / "clipwatch-worker@.service.d"
    dropins.mkdir()
    (tmp_path / "clipwatch.env").write_text("")
    for source, target in [
        (WEB_UNIT, tmp_path / WEB_UNIT.name),
        (WORKER_UNIT, tmp_path / WORKER_UNIT.name),
        (GPU_DROPIN, dropins / GPU_DROPIN.name),
    ]:
        text = source.read_text().replace("/srv/clipwatch/app/.venv/bin", str(venv_bin))
        text = text.replace("/srv/clipwatch/app", str(ROOT))
        text = text.replace("/etc/clipwatch/clipwatch.env", str(tmp_path / "clipwatch.env"))
        target.write_text(text)
    done = subprocess.run(
        [analyze, "verify", "--man=no", "./clipwatch-web.service", "./clipwatch-worker@0.service"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # verify exits 0 on some complaints (an unknown KillMode is "ignored"): none may appear.
    assert done.returncode == 0 and not (done.stdout + done.stderr).strip(), done.stderr
    for unit in (WEB_UNIT, WORKER_UNIT):
        assert unit_values(unit, "EnvironmentFile") == ["/etc/clipwatch/clipwatch.env"]
        assert unit_values(unit, "WorkingDirectory") == ["/srv/clipwatch/app"]
    assert int(unit_values(WORKER_UNIT, "TimeoutStopSec")[0]) >= 15


def test_it_explains_every_deploy_file_in_the_guide():
    guide = (ROOT / "docs" / "deployment.md").read_text()
    files = sorted(p.relative_to(ROOT).as_posix() for p in DEPLOY.rglob("*") if p.is_file())
    assert files, "deploy/ is empty"
    assert [f for f in files if f not in guide] == []
