"""config.json: validated at start, one clear line and exit code 2 on any problem;
environment overrides for the existing deployments."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from aivtuber_common.config import ConfigError, PiperVoice, Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]
NO_ENV: dict[str, str] = {}


def run_gateway_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
    base = {
        k: v
        for k, v in os.environ.items()
        if k not in ("AIVTUBER_CONFIG", "INPUT_HANDLER_URL", "OUTPUT_HANDLER_URL")
    }
    return subprocess.run(
        [sys.executable, "services/gateway-python/main.py", *args],
        cwd=ROOT,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def write(tmp_path: Path, data: object, name: str = "bad.json") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"gateway": {"prot": 8000}}, "gateway.prot: unknown key"),
        ({"gateway": {"port": "eighty"}}, "gateway.port: Input should be a valid integer"),
        ({"gateway": {"connect_timeout_s": -1}}, "gateway.connect_timeout_s:"),
        (
            {"gateway": {"routes": {"input": {"path": "/ws/input", "backends": ["http://x"]}}}},
            "gateway.routes.input.backends.0: must be a ws/wss URL",
        ),
        ("{not json", "not valid JSON"),
    ],
    ids=["unknown-key", "bad-type", "bad-value", "bad-url", "bad-json"],
)
def test_a_bad_config_stops_the_gateway_with_one_line_and_exit_code_2(
    tmp_path: Path, data: object, expected: str
) -> None:
    path = write(tmp_path, data)
    result = run_gateway_cli("--config", str(path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"gateway: config error: {path}: ")
    assert expected in lines[0]
    assert "Traceback" not in result.stderr + result.stdout


def test_a_missing_config_file_given_explicitly_is_an_error(tmp_path: Path) -> None:
    result = run_gateway_cli("--config", str(tmp_path / "nope.json"))
    assert result.returncode == 2
    assert "no such config file" in result.stderr


def test_aivtuber_config_picks_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, {"gateway": {"typo": 1}})
    result = run_gateway_cli(env={"AIVTUBER_CONFIG": str(path)})
    assert result.returncode == 2
    assert f"{path}: gateway.typo: unknown key" in result.stderr
    good = write(tmp_path, {"gateway": {"port": 9999}}, "good.json")
    assert load_settings(environ={"AIVTUBER_CONFIG": str(good)}).gateway.port == 9999


def test_a_bad_command_line_override_is_a_config_error() -> None:
    result = run_gateway_cli("--port", "70000")
    assert result.returncode == 2
    assert "config error" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_bad_url_in_the_environment_names_the_key() -> None:
    result = run_gateway_cli(env={"INPUT_HANDLER_URL": "not-a-url"})
    assert result.returncode == 2
    assert "gateway.routes.input.backends.0" in result.stderr


def test_environment_urls_override_the_config_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {"gateway": {"routes": {"input": {"path": "/ws/input", "backends": ["ws://a:1"]}}}},
    )
    settings = load_settings(
        path,
        environ={
            "INPUT_HANDLER_URL": "ws://10.0.0.5:9001",
            "OUTPUT_HANDLER_URL": "ws://10.0.0.6:9002, ws://10.0.0.7:9002",
        },
    )
    routes = settings.gateway.routes
    assert routes["input"].backends == ["ws://10.0.0.5:9001"]
    assert routes["input"].path == "/ws/input"
    # A route missing from the file comes back with its default path and the env URLs.
    assert routes["output"].path == "/ws/output/{task_id}"
    assert routes["output"].backends == ["ws://10.0.0.6:9002", "ws://10.0.0.7:9002"]


def test_every_setting_has_a_default_so_an_empty_file_works(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, {}), environ=NO_ENV)
    gateway = settings.gateway
    assert gateway.port == 8000
    assert gateway.routes["input"].backends == ["ws://127.0.0.1:8001"]
    assert gateway.routes["output"].backends == ["ws://127.0.0.1:8002"]
    assert gateway.routes["output"].audio_metrics is True
    assert gateway.routes["input"].audio_metrics is False
    assert gateway.max_message_bytes == 16 * 1024 * 1024
    assert gateway.connect_timeout_s == 5
    assert gateway.ping_interval_s == 20
    assert gateway.idle_timeout_s == 0
    assert not any(route.compression for route in gateway.routes.values())


def test_the_shipped_config_json_is_valid() -> None:
    settings = load_settings(ROOT / "config.json", environ=NO_ENV)
    assert isinstance(settings, Settings)


def test_a_config_error_is_one_line_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, {"logging": {"level": "loud"}}), environ=NO_ENV)
    message = str(caught.value)
    assert "\n" not in message
    assert "logging.level:" in message


@pytest.mark.parametrize(
    ("voice", "expected"),
    [
        (
            {"engine": "piper", "url": "http://tts:8880"},
            "tts_worker.voices.v.url: not a key of the piper engine (its keys: engine, "
            "language, visemes, intra_op_threads, model, device)",
        ),
        ({"engine": "http"}, "tts_worker.voices.v.url: required by the http engine"),
        ({"engine": "riva"}, "tts_worker.voices.v.server: required by the riva engine"),
        (
            {"engine": "espeak"},
            "tts_worker.voices.v: engine must be one of piper, hibari, kokoro_ja, sine, http, riva",
        ),
        (
            {"engine": "sine", "speaker": "heart"},
            "tts_worker.voices.v.speaker: not a key of the sine engine (its keys: engine, "
            "language, sample_rate, frequency_hz, ms_per_char)",
        ),
    ],
)
def test_a_voice_takes_only_its_engines_keys_and_says_so_in_one_line(
    tmp_path: Path, voice: dict[str, object], expected: str
) -> None:
    config = {"tts_worker": {"voices": {"v": voice}, "default_voice": "v"}}
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, config), environ=NO_ENV)
    assert "\n" not in str(caught.value)
    assert str(caught.value).endswith(expected)


def test_a_voice_without_an_engine_is_a_piper_voice(tmp_path: Path) -> None:
    config = {"tts_worker": {"voices": {"v": {"device": "cpu"}}, "default_voice": "v"}}
    voice = load_settings(write(tmp_path, config), environ=NO_ENV).tts_worker.voices["v"]
    assert isinstance(voice, PiperVoice) and voice.device == "cpu"


@pytest.mark.parametrize(
    ("route", "expected"),
    [
        (
            {"path": "/v1/{p:path}", "protocol": "http", "backends": ["ws://a:1"]},
            "gateway.routes.r.backends.0: must be a http/https URL with a host, got 'ws://a:1'",
        ),
        (
            {"path": "/ws/x", "backends": ["ws://a:1", "https://b"]},
            "gateway.routes.r.backends.1: must be a ws/wss URL with a host, got 'https://b'",
        ),
    ],
)
def test_a_routes_backends_must_speak_its_protocol(
    tmp_path: Path, route: dict[str, object], expected: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, {"gateway": {"routes": {"r": route}}}), environ=NO_ENV)
    assert str(caught.value).endswith(expected)


def test_the_openai_api_is_an_http_route_to_the_input_handler_by_default(tmp_path: Path) -> None:
    for settings in (
        load_settings(write(tmp_path, {}), environ=NO_ENV),
        load_settings(ROOT / "config.json", environ=NO_ENV),
    ):
        route = settings.gateway.routes["openai"]
        assert (route.protocol, route.backends) == ("http", ["http://127.0.0.1:8001"])
        assert settings.input_handler.output_handler_url == "ws://127.0.0.1:8002"


def test_output_handler_url_also_points_the_tasks_route_at_the_output_handlers(
    tmp_path: Path,
) -> None:
    settings = load_settings(
        write(tmp_path, {}),
        environ={"OUTPUT_HANDLER_URL": "ws://10.0.0.6:9002, wss://out.example:443"},
    )
    tasks = settings.gateway.routes["tasks"]
    assert tasks.protocol == "http" and tasks.path == "/v1/tasks/{task_id}/{file}"
    assert tasks.backends == ["http://10.0.0.6:9002", "https://out.example:443"]


def test_the_shipped_config_speaks_heart_by_default_and_keeps_joe() -> None:
    worker = load_settings(ROOT / "config.json", environ=NO_ENV).tts_worker
    assert worker.default_voice == "heart" and worker.voices["heart"].engine == "hibari"
    assert worker.voices["joe"].engine == "piper"


def test_the_voicevox_api_is_an_http_route_to_the_input_handler_by_default(tmp_path: Path) -> None:
    for settings in (
        load_settings(write(tmp_path, {}), environ=NO_ENV),
        load_settings(ROOT / "config.json", environ=NO_ENV),
    ):
        route = settings.gateway.routes["voicevox"]
        assert route.path == "/voicevox/{endpoint:path}"
        assert (route.protocol, route.backends) == ("http", ["http://127.0.0.1:8001"])
