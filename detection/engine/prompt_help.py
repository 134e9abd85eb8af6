"""Prompt helpers: warn about prompts that describe sound, and suggest visual prompts.

    sound_warnings(["a quiet street"], ["a gunshot sound"])
    # ['anomaly prompt "a gunshot sound" describes sound ("sound"): CLIP sees frames only; ...']
    suggest_prompts("someone falling", scene="a warehouse aisle")          # offline templates
    suggest_prompts("fire", endpoint=Endpoint("http://127.0.0.1:11434/v1", "llama3.2"))

CLIP compares a frame with text; it hears nothing. A prompt about a scream or a siren gets
a warning, never a refusal: the words may still pull the embedding somewhere useful, but
the operator should know. The rule, kept simple on purpose:
- `SOUND_WORDS` describe only what is heard ("sound", "noise", "loud", "hear", "scream",
  "shouting", "siren", "alarm", "beeping", ...): matched as whole words, in any case;
- `VISUAL_USES` are the phrases where such a word names something one sees ("alarm
  clock", "alarm panel", "siren lights", "image noise"): they are left out first;
- words that are both ("gunshot", "explosion", "crying", "whistle", "horn") are not
  flagged alone; "a gunshot sound" is, by "sound".

The assistant turns a short phrase into a small ensemble per class. Offline (the default) it
fills CCTV-style templates. With an `Endpoint` (an OpenAI-compatible chat-completions
server: Ollama, llama.cpp, vLLM, OpenAI) it asks the model for a JSON object and reads the
answer leniently; whatever goes wrong (a refused address, a timeout, an HTTP error, an
answer that is not the JSON asked for) falls back to the templates with a warning saying
why. The endpoint follows the outbound trust model (netpolicy.assistant_policy: loopback
and the LAN are fine, link-local and cloud metadata never; checked after DNS resolution,
connected to the checked address, no redirects).

Django-free: the portal passes its settings in an `Endpoint`.
"""

from __future__ import annotations

import http.client
import json
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from .limits import MAX_PROMPT_CHARS
from .netpolicy import ASSISTANT_SCHEMES, AddressError, assistant_policy, parse_url, redact
from .outbound import pinned_connection

MAX_PHRASE_CHARS = 200
MAX_SUGGESTED = 8  # prompts per class
DEFAULT_TIMEOUT_S = 10.0
MAX_ANSWER_BYTES = 1024 * 1024

# --- sound words ------------------------------------------------------------------------------

SOUND_WORDS = (
    "sound", "sounds", "sounding", "noise", "noises", "noisy", "loud", "loudly", "audible",
    "audibly", "hear", "hears", "hearing", "heard", "listen", "listens", "listening",
    "scream", "screams", "screaming", "screamed", "shriek", "shrieks", "shrieking",
    "shout", "shouts", "shouting", "shouted", "yell", "yells", "yelling", "yelled",
    "bang", "banging", "beep", "beeps", "beeping", "ringing", "whistling", "honk", "honks",
    "honking", "blaring", "wailing", "alarm", "alarms", "siren", "sirens",
)  # fmt: skip
VISUAL_USES = (
    r"alarms? (?:clocks?|panels?|lights?|box(?:es)?|buttons?|keypads?|sensors?|systems?)",
    r"sirens? (?:lights?|towers?|poles?|masts?)",
    r"(?:image|video|visual|digital|sensor|picture|pixel) noise",
    r"noisy (?:images?|frames?|pictures?|videos?|footage|feeds?)",
)
_SOUND = re.compile(r"\b(?:" + "|".join(SOUND_WORDS) + r")\b", re.IGNORECASE)
_VISUAL = re.compile(r"\b(?:" + "|".join(VISUAL_USES) + r")\b", re.IGNORECASE)

# What a camera would see instead, by what the prompt is about (first match wins).
_EXAMPLES = (
    (r"gun|shot|shoot|firing", "a person aiming a gun"),
    (r"scream|shout|yell|shriek|cry|argu", "a person with their mouth wide open, distressed"),
    (r"alarm|siren", "flashing red emergency lights"),
    (r"explo|blast|bang|boom", "a fireball and thick smoke"),
    (r"honk|horn|traffic|car\b", "cars stuck in a traffic jam"),
    (r"glass|shatter|smash|break", "a shattered window"),
)


def _shown(prompt: str, limit: int = 80) -> str:
    return prompt if len(prompt) <= limit else prompt[: limit - 1].rstrip() + "…"


def sound_word(prompt: str) -> str | None:
    """The first word of `prompt` that describes sound (as written), or None."""
    match = _SOUND.search(_VISUAL.sub(" ", prompt))
    return match.group(0) if match else None


def sound_warning(what: str, text: str) -> str | None:
    """The warning for `text` (what: "anomaly prompt", "the phrase") if it describes sound."""
    word = sound_word(text)
    if word is None:
        return None
    example = next(
        (f' (e.g. "{ex}")' for pattern, ex in _EXAMPLES if re.search(pattern, text, re.I)),
        " (people, objects, what they do)",
    )
    return (
        f'{what} "{_shown(text)}" describes sound ("{word}"): CLIP sees frames only; '
        f"describe what a camera would see{example}"
    )


def sound_warnings(normal: Sequence[str], anomaly: Sequence[str]) -> list[str]:
    """One sentence per prompt that describes sound, naming the class, prompt and word."""
    warnings: list[str] = []
    for label, prompts in (("normal", normal), ("anomaly", anomaly)):
        for prompt in dict.fromkeys(prompts):  # each distinct prompt once, in order
            warning = sound_warning(f"{label} prompt", prompt)
            if warning is not None:
                warnings.append(warning)
    return warnings


# --- suggestions ------------------------------------------------------------------------------

ANOMALY_TEMPLATES = (
    "a CCTV camera frame of {phrase}",
    "a surveillance camera image showing {phrase}",
    "security camera footage of {phrase}",
    "a grainy CCTV still of {phrase}",
)
ANOMALY_SCENE_TEMPLATES = (
    "a CCTV camera frame of {phrase} in {scene}",
    "a surveillance camera image of {scene} showing {phrase}",
    "security camera footage of {phrase} in {scene}",
    "a CCTV camera frame of {phrase}",
)
NORMAL_TEMPLATES = (
    "a CCTV camera frame of an ordinary scene with nothing unusual",
    "a surveillance camera image of a normal, calm scene",
    "security camera footage where nothing unusual is happening",
)
NORMAL_SCENE_TEMPLATES = (
    "a CCTV camera frame of {scene} on an ordinary day",
    "a surveillance camera image of {scene} with nothing unusual",
    "security camera footage of {scene}, everything normal",
    "a CCTV camera frame of an ordinary scene with nothing unusual",
)

# Sound phrasings the templates drop from a phrase ("the sound of breaking glass").
_SOUND_PHRASING = re.compile(
    r"\b(?:(?:the|a|an)\s+)?(?:loud\s+)?(?:sounds?|noises?)\s+of\s+"  # "the sound of X"
    r"|\s+(?:sounds?|noises?)\b(?=\s*$)"  # "X sound" at the end
    r"|\b(?:loud(?:ly)?|noisy|audibl[ey])\s+",  # "loud X"
    re.IGNORECASE,
)
_ARTICLE = re.compile(r"(?:a|an|the|this|that|my|our|their|some|every)\s", re.IGNORECASE)


@dataclass
class Suggestion:
    normal: list[str]
    anomaly: list[str]
    source: Literal["templates", "llm"]
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Endpoint:
    """An OpenAI-compatible chat-completions server (PROMPT_ASSISTANT_* settings)."""

    url: str  # a base URL (http://host:11434/v1) or the full .../chat/completions URL
    model: str
    api_key: str | None = None  # sent as `Authorization: Bearer ...`
    timeout_s: float = DEFAULT_TIMEOUT_S


class AssistantError(Exception):
    """Why the endpoint's suggestions could not be used (shown in a warning)."""


def _tidy(text: str) -> str:
    """One line, single spaces, no trailing punctuation."""
    return " ".join(text.split()).strip(" .,;:!?")


def _lower_first(text: str) -> str:
    # "Someone falling" reads as "... of someone falling"; an acronym ("ATM") stays.
    return text[0].lower() + text[1:] if text[:2] and not text[:2].isupper() else text


def _visual(what: str, text: str) -> tuple[str, list[str]]:
    """`text` without sound phrasings ("the sound of X", "loud X"), and warnings: that some
    went, and about any sound word left ("screaming")."""
    cleaned = _tidy(_SOUND_PHRASING.sub(" ", text)) or text
    notes = []
    if cleaned.lower() != text.lower():
        notes.append(
            f'{what} "{_shown(text)}" describes sound: CLIP sees frames only, so the '
            f'suggestions describe "{_shown(cleaned)}"'
        )
    left = sound_warning(what, cleaned)
    return cleaned, [*notes, left] if left else notes


def _with_article(scene: str) -> str:
    return scene if _ARTICLE.match(scene + " ") else f"the {scene}"


def template_prompts(phrase: str, scene: str = "") -> tuple[list[str], list[str]]:
    """(normal, anomaly) prompts from the templates, for a tidied phrase and scene."""
    phrase = _lower_first(phrase)
    if scene:
        scene = _with_article(_lower_first(scene))
        return (
            [t.format(scene=scene) for t in NORMAL_SCENE_TEMPLATES],
            [t.format(phrase=phrase, scene=scene) for t in ANOMALY_SCENE_TEMPLATES],
        )
    return list(NORMAL_TEMPLATES), [t.format(phrase=phrase) for t in ANOMALY_TEMPLATES]


def limit_prompts(items: Iterable[object]) -> list[str]:
    """Stripped, one-line, de-duplicated (ignoring case) text prompts: at most MAX_SUGGESTED,
    each under MAX_PROMPT_CHARS (longer ones are dropped, not cut)."""
    kept: list[str] = []
    seen: set[str] = set()
    for item in items:
        if not isinstance(item, str):
            continue
        # Models number or bullet their lists, and quote items, despite being asked not to.
        text = re.sub(r"^\s*(?:[-*•]|\d{1,2}[.)])\s+", "", item)
        text = " ".join(text.split()).strip("\"' \u201c\u201d\u2018\u2019")
        if not text or len(text) >= MAX_PROMPT_CHARS or text.lower() in seen:
            continue
        seen.add(text.lower())
        kept.append(text)
        if len(kept) == MAX_SUGGESTED:
            break
    return kept


def suggest_prompts(
    phrase: str, *, scene: str = "", endpoint: Endpoint | None = None
) -> Suggestion:
    """Visual, CCTV-style prompts for `phrase` ("someone falling"), optionally in `scene`.

    Without `endpoint`, from the templates. With one, from the model, or from the templates
    with a warning saying why not. Raises ValueError only for an empty or over-long phrase
    or scene (callers validate those first).
    """
    phrase, scene = _tidy(phrase or ""), _tidy(scene or "")
    if not phrase:
        raise ValueError("describe the anomaly in a few words")
    if len(phrase) > MAX_PHRASE_CHARS or len(scene) > MAX_PHRASE_CHARS:
        raise ValueError(f"the phrase and the scene may have at most {MAX_PHRASE_CHARS} characters")
    notes: list[str] = []
    if endpoint is not None:
        try:
            normal, anomaly = ask_endpoint(endpoint, phrase, scene)
        except AssistantError as exc:
            notes.append(
                f"The prompt assistant was not used: {exc}. These suggestions come from templates."
            )
        else:
            normal, anomaly = limit_prompts(normal), limit_prompts(anomaly)
            return Suggestion(normal, anomaly, "llm", sound_warnings(normal, anomaly))
    # The templates repeat the phrase and scene: warn about those once, not per prompt.
    phrase, phrase_notes = _visual("the phrase", phrase)
    scene, scene_notes = _visual("the scene", scene) if scene else ("", [])
    notes += phrase_notes + scene_notes
    normal, anomaly = template_prompts(phrase, scene)
    return Suggestion(limit_prompts(normal), limit_prompts(anomaly), "templates", notes)


# --- the chat-completions client -------------------------------------------------------------

SYSTEM_PROMPT = (
    "You write text prompts for CLIP zero-shot anomaly detection on CCTV camera frames. "
    "CLIP compares one still frame with short captions: it sees no motion over time and "
    "hears nothing, so describe only what is visible, as a security camera would see it. "
    'Answer with one JSON object and nothing else: {"normal": [...], "anomaly": [...]}, '
    "3 to 6 short captions in each list (under 20 words each). The anomaly captions show "
    "the event described; the normal captions show the same kind of scene with nothing "
    "unusual happening. Never mention sounds."
)


def chat_url(url: str) -> str:
    """The chat-completions URL for a base URL (".../v1") or the full one, as given."""
    url = url.strip()
    path = url.split("?", 1)[0].rstrip("/")
    if path.endswith("/chat/completions"):
        return url
    return path + "/chat/completions"


def request_body(model: str, phrase: str, scene: str = "") -> dict[str, Any]:
    user = f"Anomaly: {phrase}\nScene: {scene or 'not specified'}"
    return {
        "model": model,
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": user},
        ],
        "temperature": 0.2,
    }


def ask_endpoint(endpoint: Endpoint, phrase: str, scene: str = "") -> tuple[list[str], list[str]]:
    """(normal, anomaly) prompts from the endpoint; `AssistantError` says why not."""
    if not endpoint.model.strip():
        raise AssistantError("no model name is set (PROMPT_ASSISTANT_MODEL)")
    url = chat_url(endpoint.url)
    shown = redact(url)
    timeout = endpoint.timeout_s
    try:
        target = parse_url(url, ASSISTANT_SCHEMES, "prompt assistant URL")
        addresses = assistant_policy().check(target)
    except AddressError as exc:
        raise AssistantError(str(exc).rstrip(".")) from None
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json",
        "User-Agent": "clipwatch-prompt-assistant",
    }
    if endpoint.api_key:
        headers["Authorization"] = f"Bearer {endpoint.api_key}"
    body = json.dumps(request_body(endpoint.model.strip(), phrase, scene)).encode()
    deadline = time.monotonic() + timeout
    connection = pinned_connection(target, addresses, timeout=timeout)
    try:
        connection.request("POST", target.request_target, body=body, headers=headers)
        response = connection.getresponse()
        if not 200 <= response.status < 300:
            redirect = " (a redirect, not followed)" if 300 <= response.status < 400 else ""
            raise AssistantError(f"{shown} answered HTTP {response.status}{redirect}")
        raw = _read(response, deadline)
    except TimeoutError:
        raise AssistantError(f"{shown} did not answer within {timeout:g} s") from None
    except (OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise AssistantError(f"{shown} could not be reached ({reason})") from None
    except ValueError:  # http.client refuses a header; its message would show the key
        raise AssistantError(
            "the request could not be sent: PROMPT_ASSISTANT_API_KEY must be one line of "
            "plain ASCII text"
        ) from None
    finally:
        connection.close()
    return parse_answer(raw)


def _read(response: http.client.HTTPResponse, deadline: float) -> bytes:
    """The body, at most MAX_ANSWER_BYTES, before `deadline` (each read has the timeout)."""
    chunks: list[bytes] = []
    size = 0
    while chunk := response.read1(64 * 1024):
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            raise AssistantError(f"its answer is larger than {MAX_ANSWER_BYTES // 1024} KiB")
        if time.monotonic() > deadline:
            raise TimeoutError
        chunks.append(chunk)
    return b"".join(chunks)


def parse_answer(raw: bytes | str) -> tuple[list[str], list[str]]:
    """(normal, anomaly) from a chat-completions answer; lenient about the message text."""
    try:
        data = json.loads(raw)
    except ValueError:
        raise AssistantError("its answer is not JSON") from None
    content = _message_content(data)
    if content is None:
        raise AssistantError("its answer has no message")
    found = extract_json_object(content)
    if found is None:
        raise AssistantError('its message has no JSON object with "normal" and "anomaly" lists')
    normal, anomaly = (limit_prompts(_as_list(found.get(key))) for key in ("normal", "anomaly"))
    for label, prompts in (("normal", normal), ("anomaly", anomaly)):
        if not prompts:
            raise AssistantError(f"it suggested no {label} prompts")
    return normal, anomaly


def _message_content(data: object) -> str | None:
    if not isinstance(data, dict):
        return None
    choices = data.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        message = choices[0].get("message") or {}
        content = message.get("content") if isinstance(message, dict) else None
        if content is None:
            content = choices[0].get("text")  # the older completions shape
    else:
        message = data.get("message")  # Ollama's own /api/chat
        content = message.get("content") if isinstance(message, dict) else None
    return content if isinstance(content, str) else None


def _as_list(value: object) -> list[object]:
    if isinstance(value, str):
        return list(value.splitlines())
    return list(value) if isinstance(value, list) else []


def extract_json_object(text: str, *, attempts: int = 100) -> dict[str, Any] | None:
    """The first JSON object in `text` with a "normal" or "anomaly" key.

    Models wrap JSON in code fences or explain it before and after; each "{" is tried as the
    start of an object (at most `attempts` of them: the answer is bounded, so is the work).
    """
    text = re.sub(r"```[a-zA-Z]*", "", text)
    decoder = json.JSONDecoder()
    start = text.find("{")
    while start != -1 and attempts > 0:
        attempts -= 1
        try:
            found, _ = decoder.raw_decode(text, start)
        except ValueError:
            pass
        else:
            if isinstance(found, dict) and ("normal" in found or "anomaly" in found):
                return found
        start = text.find("{", start + 1)
    return None
