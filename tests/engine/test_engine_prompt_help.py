"""Prompt helpers: sound-word warnings and the prompt assistant (templates, or a chat server)."""

from __future__ import annotations

import json
import socket
import time

import pytest

from detection.engine.limits import MAX_PROMPT_CHARS
from detection.engine.prompt_help import (
    MAX_SUGGESTED,
    Endpoint,
    chat_url,
    extract_json_object,
    sound_warnings,
    suggest_prompts,
)
from tests.support.chat import ChatServer
from tests.support.dns import resolve_as

ANSWER = {
    "normal": ["people walking through the lobby", "an empty lobby with chairs"],
    "anomaly": ["a person lying on the lobby floor", "a person falling down the stairs"],
}

# --- sound words ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "word"),
    [
        ("a gunshot sound", "sound"),
        ("the sound of breaking glass", "sound"),
        ("people SCREAMING", "SCREAMING"),
        ("a man shouting at a cashier", "shouting"),
        ("someone yelling for help", "yelling"),
        ("a loud party", "loud"),
        ("noise in the hallway", "noise"),
        ("a car alarm going off", "alarm"),
        ("a siren", "siren"),
        ("you can hear a bang", "hear"),
        ("an audible crash", "audible"),
        ("a horn honking", "honking"),
        ("a smoke detector beeping", "beeping"),
    ],
)
def test_it_warns_about_prompts_that_describe_sound(prompt, word):
    [warning] = sound_warnings([], [prompt])
    assert warning.startswith(f'anomaly prompt "{prompt}" describes sound ("{word}")')
    assert "CLIP sees frames only; describe what a camera would see" in warning


@pytest.mark.parametrize(
    "prompt",
    [
        "an alarm clock on a desk",
        "a red alarm panel on the wall",
        "siren lights on a police car",
        "heavy image noise on a dark frame",
        "a noisy video frame",
        "a person crying",  # tears are visible; only "crying sound" is flagged
        "an explosion",
        "a man holding a whistle",
        "soundproof panels",  # whole words only
        "a quiet street",
        "a fire",
    ],
)
def test_it_does_not_warn_about_what_a_camera_can_see(prompt):
    assert sound_warnings([prompt], [prompt]) == []


def test_it_names_the_class_the_prompt_and_the_word_once_per_prompt():
    warnings = sound_warnings(
        ["a quiet street", "a noisy crowd", "a noisy crowd"], ["a gunshot sound", "a fire"]
    )
    assert warnings == [
        'normal prompt "a noisy crowd" describes sound ("noisy"): CLIP sees frames only; '
        "describe what a camera would see (people, objects, what they do)",
        'anomaly prompt "a gunshot sound" describes sound ("sound"): CLIP sees frames only; '
        'describe what a camera would see (e.g. "a person aiming a gun")',
    ]


# --- templates, offline -----------------------------------------------------------------------


@pytest.fixture
def no_network(monkeypatch) -> list[object]:
    """Record (and refuse) every connection attempt."""
    attempts: list[object] = []

    def connect(self, address):
        attempts.append(address)
        raise AssertionError(f"connected to {address}")

    monkeypatch.setattr(socket.socket, "connect", connect)
    return attempts


def test_it_suggests_cctv_prompts_from_templates_offline(no_network):
    suggestion = suggest_prompts("  Someone falling. ")
    assert suggestion.source == "templates"
    assert suggestion.warnings == []
    assert "a CCTV camera frame of someone falling" in suggestion.anomaly
    assert all("someone falling" in prompt for prompt in suggestion.anomaly)
    assert "a CCTV camera frame of an ordinary scene with nothing unusual" in suggestion.normal
    for prompts in (suggestion.normal, suggestion.anomaly):
        assert 2 <= len(prompts) <= MAX_SUGGESTED
        assert len(set(prompts)) == len(prompts)
    assert no_network == []


def test_it_describes_the_scene_in_both_classes(no_network):
    suggestion = suggest_prompts("fire", scene="warehouse aisle")
    assert "a CCTV camera frame of fire in the warehouse aisle" in suggestion.anomaly
    assert "a CCTV camera frame of the warehouse aisle on an ordinary day" in suggestion.normal
    assert sum("warehouse aisle" in p for p in suggestion.normal) >= 3


def test_it_drops_sound_phrasing_from_the_phrase_and_warns_about_what_is_left(no_network):
    glass = suggest_prompts("the sound of breaking glass", scene="a noisy bar")
    assert glass.anomaly[0] == "a CCTV camera frame of breaking glass in a bar"
    assert not any("sound" in p or "noisy" in p for p in glass.normal + glass.anomaly)
    assert glass.warnings == [
        'the phrase "the sound of breaking glass" describes sound: CLIP sees frames only, so '
        'the suggestions describe "breaking glass"',
        'the scene "a noisy bar" describes sound: CLIP sees frames only, so the suggestions '
        'describe "a bar"',
    ]

    screams = suggest_prompts("people screaming")
    [warning] = screams.warnings  # about the phrase once, not once per template
    assert warning.startswith('the phrase "people screaming" describes sound ("screaming")')


@pytest.mark.parametrize("phrase", ["", "   ", "...", "x" * 201])
def test_it_refuses_an_empty_or_overlong_phrase(phrase):
    with pytest.raises(ValueError):
        suggest_prompts(phrase)


# --- the chat-completions endpoint ------------------------------------------------------------


def test_it_asks_an_openai_compatible_endpoint_and_reads_its_answer():
    content = (
        "Sure! Here are prompts:\n```json\n"
        + json.dumps(
            {
                "normal": [
                    *ANSWER["normal"],
                    "  People walking through the lobby ",  # a duplicate, ignoring case
                    "x" * MAX_PROMPT_CHARS,  # too long: dropped
                    42,  # not text: dropped
                ],
                "anomaly": [f"{n}. a person falling, view {n}" for n in range(1, 11)]
                + ["a loud bang in the lobby"],
            }
        )
        + "\n```\nHope this helps."
    )
    with ChatServer(content) as server:
        endpoint = Endpoint(server.base_url, "tiny-llm", api_key="sk-test", timeout_s=5)
        suggestion = suggest_prompts("someone falling", scene="a hotel lobby", endpoint=endpoint)

    [request] = server.requests
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer sk-test"
    assert request.headers["content-type"] == "application/json"
    assert request.body["model"] == "tiny-llm"
    assert request.body["temperature"] == 0.2
    system, user = request.body["messages"]
    assert system["role"] == "system" and "JSON" in system["content"]
    assert user["role"] == "user"
    assert "someone falling" in user["content"] and "a hotel lobby" in user["content"]

    assert suggestion.source == "llm"
    assert suggestion.normal == ANSWER["normal"]
    # At most MAX_SUGGESTED, list numbering removed; the sound prompt was the 11th: cut.
    assert suggestion.anomaly == [f"a person falling, view {n}" for n in range(1, 9)]
    assert suggestion.warnings == []


def test_it_warns_about_sound_in_the_endpoints_prompts_and_sends_no_key_unless_set():
    answer = {"normal": ["a calm street"], "anomaly": ["a siren wailing", "a car on fire"]}
    with ChatServer(json.dumps(answer)) as server:
        full_url = f"http://127.0.0.1:{server.port}/v1/chat/completions"
        suggestion = suggest_prompts("fire", endpoint=Endpoint(full_url, "tiny-llm"))
    [request] = server.requests
    assert request.path == "/v1/chat/completions"
    assert "authorization" not in request.headers
    assert suggestion.source == "llm"
    assert suggestion.anomaly == answer["anomaly"]
    [warning] = suggestion.warnings
    assert warning.startswith('anomaly prompt "a siren wailing" describes sound ("siren")')


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:11434/v1", "http://127.0.0.1:11434/v1/chat/completions"),
        ("http://127.0.0.1:11434/v1/", "http://127.0.0.1:11434/v1/chat/completions"),
        ("http://gpu-box:8000/v1/chat/completions", "http://gpu-box:8000/v1/chat/completions"),
        ("https://api.example.com/openai/v1/chat/completions/", "https://api.example.com/openai/v1/chat/completions/"),
    ],
)  # fmt: skip
def test_it_accepts_a_base_url_or_the_full_chat_completions_url(url, expected):
    assert chat_url(url) == expected


def test_it_falls_back_to_templates_when_the_endpoint_is_too_slow():
    with ChatServer(json.dumps(ANSWER), delay=10) as server:
        started = time.monotonic()
        endpoint = Endpoint(server.base_url, "tiny-llm", timeout_s=0.5)
        suggestion = suggest_prompts("someone falling", endpoint=endpoint)
        elapsed = time.monotonic() - started
    assert len(server.requests) == 1
    assert elapsed < 5
    assert suggestion.source == "templates"
    assert "a CCTV camera frame of someone falling" in suggestion.anomaly
    [warning] = suggestion.warnings
    assert "did not answer within 0.5 s" in warning
    assert warning.endswith("These suggestions come from templates.")


@pytest.mark.parametrize(
    ("server", "reason"),
    [
        (dict(body=b"<html>Bad gateway</html>"), "its answer is not JSON"),
        (dict(content="I cannot help with that."), 'no JSON object with "normal" and "anomaly"'),
        (dict(content='{"normal": [], "anomaly": ["a fire"]}'), "it suggested no normal prompts"),
        (dict(content='{"normal": ["a street"]}'), "it suggested no anomaly prompts"),
        (dict(body=b'{"error": "model not found"}', status=404), "answered HTTP 404"),
        (
            dict(status=302, headers={"Location": "http://169.254.169.254/"}),
            "answered HTTP 302 (a redirect, not followed)",
        ),
    ],
)
def test_it_falls_back_to_templates_when_the_answer_is_not_what_was_asked(server, reason):
    with ChatServer(**server) as chat:
        endpoint = Endpoint(chat.base_url, "tiny-llm", api_key="sk-secret-key")
        suggestion = suggest_prompts("fire", endpoint=endpoint)
    assert len(chat.requests) == 1  # a redirect is not followed
    assert suggestion.source == "templates"
    assert suggestion.anomaly[0] == "a CCTV camera frame of fire"
    [warning] = suggestion.warnings
    assert reason in warning
    assert "sk-secret-key" not in warning


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://169.254.169.254/v1", "a cloud metadata address"),
        ("http://[::ffff:169.254.169.254]/v1", "a cloud metadata address"),
        ("http://169.254.10.1:11434/v1", "a link-local address"),
        ("http://metadata.internal/v1", "a cloud metadata address"),  # after DNS resolution
        ("http://0.0.0.0:11434/v1", "an unspecified address"),
        ("file:///etc/passwd", "must use http or https"),
    ],
)
def test_it_refuses_metadata_and_link_local_endpoints_without_connecting(
    monkeypatch, no_network, url, reason
):
    resolve_as(monkeypatch, {"metadata.internal": ["10.0.0.8", "169.254.169.254"]})
    suggestion = suggest_prompts("fire", endpoint=Endpoint(url, "tiny-llm"))
    assert no_network == []
    assert suggestion.source == "templates"
    [warning] = suggestion.warnings
    assert reason in warning


def test_it_reaches_a_lan_endpoint_by_name_at_the_checked_address(monkeypatch):
    with ChatServer(json.dumps(ANSWER)) as server:
        # "gpu-box" resolves to loopback here, as a LAN name would to a private address.
        asked = resolve_as(monkeypatch, {"gpu-box": ["127.0.0.1"]})
        endpoint = Endpoint(f"http://gpu-box:{server.port}/v1", "tiny-llm")
        suggestion = suggest_prompts("someone falling", endpoint=endpoint)
    assert asked == ["gpu-box"]  # one lookup; the connection went to the checked address
    assert server.requests[0].headers["host"] == f"gpu-box:{server.port}"
    assert suggestion.source == "llm"


def test_it_falls_back_when_nothing_listens_or_no_model_is_set(no_network):
    suggestion = suggest_prompts("fire", endpoint=Endpoint("http://127.0.0.1:1/v1", "  "))
    assert suggestion.source == "templates"
    assert "no model name is set (PROMPT_ASSISTANT_MODEL)" in suggestion.warnings[0]
    assert no_network == []


def test_it_falls_back_without_showing_a_key_that_cannot_be_sent():
    with ChatServer(json.dumps(ANSWER)) as server:
        endpoint = Endpoint(server.base_url, "m", api_key="sk-secret\nX-Injected: 1")
        suggestion = suggest_prompts("fire", endpoint=endpoint)
    assert server.requests == []
    assert suggestion.source == "templates"
    [warning] = suggestion.warnings
    assert "PROMPT_ASSISTANT_API_KEY must be one line" in warning
    assert "sk-secret" not in warning


def test_it_falls_back_when_the_connection_is_refused():
    with ChatServer() as server:
        port = server.port
    suggestion = suggest_prompts("fire", endpoint=Endpoint(f"http://127.0.0.1:{port}/v1", "m"))
    assert suggestion.source == "templates"
    assert "could not be reached" in suggestion.warnings[0]


@pytest.mark.parametrize(
    "text",
    [
        json.dumps(ANSWER),
        "```json\n" + json.dumps(ANSWER) + "\n```",
        "Here you go: " + json.dumps(ANSWER) + " -- enjoy {not json}",
        "{broken: yes} then " + json.dumps(ANSWER),
    ],
)
def test_it_finds_the_json_object_in_a_chatty_answer(text):
    assert extract_json_object(text) == ANSWER


def test_it_reads_ollamas_own_chat_shape_and_newline_separated_lists():
    content = json.dumps({"normal": "a\nb", "anomaly": ["c"]})
    body = json.dumps({"message": {"role": "assistant", "content": content}}).encode()
    with ChatServer(body=body) as server:
        suggestion = suggest_prompts("fire", endpoint=Endpoint(server.base_url, "m"))
    assert (suggestion.source, suggestion.normal, suggestion.anomaly) == ("llm", ["a", "b"], ["c"])
