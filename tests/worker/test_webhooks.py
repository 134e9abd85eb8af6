"""Incident webhooks against real local receivers: where they may go, what the logs show.

docs/security.md ("Outbound requests: the trust model") is the promise: receivers on
loopback or private networks only when DETECTION_WEBHOOK_ALLOWED_NETWORKS opens them, never
link-local or cloud metadata addresses, checked after DNS resolution and connected to the
checked address, http/https only, no redirects, no credentials in logs.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from ipaddress import ip_network

import pytest

from detection.worker.webhooks import deliver
from tests.support.dns import resolve_as
from tests.support.webhooks import Receiver

LOOPBACK = [ip_network("127.0.0.0/8"), ip_network("::1/128")]
EVENT = {"event": "incident.opened", "incident": {"id": 7}}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


@pytest.fixture
def loopback_allowed(settings):
    settings.DETECTION_WEBHOOK_ALLOWED_NETWORKS = LOOPBACK


def webhook_log(caplog) -> str:
    records = caplog.records
    return "\n".join(r.getMessage() for r in records if r.name == "detection.worker.webhooks")


@pytest.mark.usefixtures("loopback_allowed")
def test_it_delivers_to_an_allowed_receiver_with_the_urls_credentials_as_basic_auth(receiver):
    url = f"http://hook:s3cret@127.0.0.1:{receiver.port}/hook?kind=incident"
    assert deliver(url, EVENT, retries=1) is True
    [request] = receiver.requests
    assert request["method"] == "POST" and request["path"] == "/hook?kind=incident"
    assert json.loads(request["body"]) == EVENT
    headers = request["headers"]
    assert headers["Content-Type"] == "application/json"
    assert headers["Authorization"] == "Basic " + base64.b64encode(b"hook:s3cret").decode()


@pytest.mark.parametrize("host", ["127.0.0.1", "[::ffff:127.0.0.1]", "localhost"])
def test_it_refuses_a_loopback_receiver_unless_the_setting_allows_it(
    settings, receiver, caplog, host
):
    settings.DETECTION_WEBHOOK_ALLOWED_NETWORKS = []
    url = f"http://{host}:{receiver.port}/hook"
    assert deliver(url, EVENT, retries=3, backoff_s=0.01) is False
    assert receiver.requests == []
    log = webhook_log(caplog)
    assert "loopback" in log and "DETECTION_WEBHOOK_ALLOWED_NETWORKS" in log
    assert log.count("\n") == 0, "a refusal is final: logged once, not retried"

    settings.DETECTION_WEBHOOK_ALLOWED_NETWORKS = LOOPBACK
    assert deliver(url, EVENT, retries=1) is True
    assert len(receiver.requests) == 1


def test_it_refuses_private_and_metadata_receivers_after_resolving_them(
    settings, monkeypatch, caplog
):
    settings.DETECTION_WEBHOOK_ALLOWED_NETWORKS = []
    resolve_as(
        monkeypatch,
        {
            "nas.example.net": ["192.168.1.5"],
            "mixed.example.net": ["93.184.215.14", "10.1.2.3"],  # one bad answer is enough
            "meta.example.net": ["169.254.169.254"],
        },
    )
    for host, reason in [
        ("nas.example.net", "192.168.1.5, a private"),
        ("mixed.example.net", "10.1.2.3, a private"),
        ("meta.example.net", "169.254.169.254, a cloud metadata"),
        ("gone.example.net", "does not resolve"),
    ]:
        caplog.clear()
        assert deliver(f"https://{host}/hook", EVENT, retries=1) is False
        assert reason in webhook_log(caplog), host

    # Opening every network still leaves the metadata service shut.
    settings.DETECTION_WEBHOOK_ALLOWED_NETWORKS = [ip_network("0.0.0.0/0"), ip_network("::/0")]
    caplog.clear()
    assert deliver("http://[::ffff:169.254.169.254]/latest/meta-data/", EVENT, retries=1) is False
    assert "cloud metadata" in webhook_log(caplog)


@pytest.mark.usefixtures("loopback_allowed")
def test_it_connects_to_the_checked_address_and_keeps_the_host_name(monkeypatch, receiver):
    # `hooks.test` exists only in this fake DNS: delivery works only if the connection goes to
    # the address that was checked, without a second lookup that a rebinding could answer.
    asked = resolve_as(monkeypatch, {"hooks.test": ["127.0.0.1"]})
    assert deliver(f"http://hooks.test:{receiver.port}/hook", EVENT, retries=1) is True
    assert asked == ["hooks.test"]
    [request] = receiver.requests
    assert request["headers"]["Host"] == f"hooks.test:{receiver.port}"


@pytest.mark.usefixtures("loopback_allowed")
def test_it_does_not_follow_a_redirect(caplog):
    with Receiver() as target, Receiver(302, {"Location": ""}) as hook:
        hook.headers["Location"] = f"http://user:pw@127.0.0.1:{target.port}/elsewhere"
        assert deliver(hook.url, EVENT, retries=3, backoff_s=0.01) is False
        assert len(hook.requests) == 1, "a redirect is a failed delivery: not retried"
        assert target.requests == []
    log = webhook_log(caplog)
    assert "HTTP 302" in log and "not followed" in log
    assert f"127.0.0.1:{target.port}/elsewhere" in log and "pw@" not in log


@pytest.mark.parametrize(
    "url", ["ftp://hooks.example.net/x", "file:///etc/passwd", "gopher://127.0.0.1:25/"]
)
def test_it_refuses_other_schemes_without_retrying(caplog, url):
    assert deliver(url, EVENT, retries=3, backoff_s=0.01) is False
    log = webhook_log(caplog)
    assert "must use http or https" in log and log.count("\n") == 0


@pytest.mark.usefixtures("loopback_allowed")
def test_it_never_logs_credentials(caplog):
    with Receiver(500) as failing:
        url = f"http://hook:s3cret@127.0.0.1:{failing.port}/hook?token=t0ken&site=gate"
        assert deliver(url, EVENT, retries=2, backoff_s=0.01) is False
        assert len(failing.requests) == 2
    # A user name alone may be the secret (a token): hidden too. Nothing listens on port 9.
    assert deliver("http://t0k3n-as-user@127.0.0.1:9/hook", EVENT, retries=1) is False
    log = webhook_log(caplog)
    assert "HTTP 500" in log and "hook:***@127.0.0.1" in log and "site=gate" in log
    assert "***@127.0.0.1:9" in log
    for secret in ("s3cret", "t0ken", "t0k3n-as-user"):
        assert secret not in log


def test_it_reads_the_allowed_networks_and_names_the_variable_when_one_is_bad(monkeypatch):
    from django.core.exceptions import ImproperlyConfigured

    from portal.env import get_networks

    name = "DETECTION_WEBHOOK_ALLOWED_NETWORKS"
    monkeypatch.setenv(name, " 10.0.0.0/8, fd00::/8,192.168.1.5 ")
    assert get_networks(name, []) == [
        ip_network("10.0.0.0/8"),
        ip_network("fd00::/8"),
        ip_network("192.168.1.5/32"),
    ]
    monkeypatch.setenv(name, "")
    assert get_networks(name, ["127.0.0.0/8"]) == [ip_network("127.0.0.0/8")]
    for bad in ("10.0.0.5/8", "intranet", "10.0.0.0/33"):
        monkeypatch.setenv(name, f"fd00::/8,{bad}")
        with pytest.raises(ImproperlyConfigured, match=f"{name}=.*{bad!r} is not one"):
            get_networks(name, [])
