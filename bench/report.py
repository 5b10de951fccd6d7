"""The readable tables: GitHub-flavoured Markdown, pasted into docs by bench/docs.py.

Every figure is the median over rounds; a ratio is the median over rounds of that round's
ratio (variant and anchor measured a few seconds apart), so it can differ slightly from the
ratio of the two medians shown beside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = [
    "browser_tables",
    "edge_tables",
    "gateway_tables",
    "markdown_table",
    "render",
    "speech_tables",
]

NA = "n/a"
RATIO_TARGET = 0.8
ADDED_RTT_TARGET_US = 200.0
IDLE_KB_TARGET = 30.0
TTFA_TARGET_MS = 100.0
TTFA_OVER_ENGINE_TARGET = 1.2
STREAMS_TARGET = 16
WORKER_START_TARGET_S = 3.0
BROWSER_OVER_PYTHON_MS = 30.0  # page's first audible sample heard - the Python client's, p50


def render(results: dict[str, Any]) -> str:
    """Every table of a run, with its heading, as one Markdown string."""
    parts: list[str] = []
    scenarios = results.get("scenarios", {})
    if "gateway" in scenarios:
        parts.extend(gateway_tables(scenarios["gateway"]))
    if "speech" in scenarios:
        parts.extend(speech_tables(scenarios["speech"]))
    if "edge" in scenarios:
        parts.extend(edge_tables(scenarios["edge"]))
    if "voices" in scenarios:
        parts.extend(voices_tables(scenarios["voices"]))
    if "openai" in scenarios:
        from .openai_api import openai_tables

        parts.extend(openai_tables(scenarios["openai"]))
    if "browser" in scenarios:
        parts.extend(browser_tables(scenarios["browser"]))
    if "stream" in scenarios:
        from .stream import stream_tables  # stream.py imports this module's markdown_table

        parts.extend(stream_tables(scenarios["stream"]))
    if "plugins" in scenarios:
        parts.extend(plugins_tables(scenarios["plugins"]))
    if "bus" in scenarios:
        from .bus import bus_tables  # bus.py imports this module's markdown_table

        parts.extend(bus_tables(scenarios["bus"]))
    machine = results.get("machine", {})
    parts.append(
        f"_{results.get('mode', '?')} run, {machine.get('date', '?')}, "
        f"{machine.get('cpu_count', '?')} CPUs ({machine.get('cpu_model') or 'unknown CPU'}), "
        f"Python {machine.get('python', '?')}, commit {machine.get('git_commit') or '?'}; "
        f"command: `{results.get('command', './bench')}`_"
    )
    return "\n\n".join(parts) + "\n"


def plugins_tables(plugins: dict[str, Any]) -> list[str]:
    """The plugins scenario: each part that ran (frameworks: bench/plugins.py; the VOICEVOX
    API and Opus: bench/plugins_formats.py)."""
    parts: list[str] = []
    if "frameworks" in plugins:
        from .plugins import framework_tables  # it imports this module

        parts.extend(framework_tables(plugins["frameworks"]))
    if "formats" in plugins:
        from .plugins_formats import plugins_formats_tables

        parts.extend(plugins_formats_tables(plugins["formats"]))
    return parts


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        padded = [
            str(cell).ljust(width) if i == 0 else str(cell).rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(
        ("-" * (w + 1) + ":") if i else ("-" * (w + 2)) for i, w in enumerate(widths)
    )
    return "\n".join([line(header), rule + "|", *(line(row) for row in rows)])


def gateway_tables(hop: dict[str, Any]) -> list[str]:
    params = hop["params"]
    medians: dict[str, dict[str, float | None]] = hop["medians"]
    ratios: dict[str, dict[str, dict[str, float | None]]] = hop["ratios"]
    variants: list[str] = list(hop["variants"])
    size, conns, chunk = params["text_bytes"], params["conns"], params["stream_bytes"]
    rows_spec: list[tuple[str, str, str]] = [
        (f"RTT {size} B, 1 conn, p50 (µs)", "rtt1_p50_us", "int"),
        (f"RTT {size} B, 1 conn, p99 (µs)", "rtt1_p99_us", "int"),
        ("added RTT p50 vs direct (µs)", "rtt1_added_p50_us", "int"),
        (f"RTT, {conns} conns, p50 (µs)", "conns_p50_us", "int"),
        (f"RTT, {conns} conns, p99 (µs)", "conns_p99_us", "int"),
        (f"round trips/s, {conns} conns", "conns_round_trips_per_s", "int"),
        (f"stream {chunk // 1024} KiB, msgs/s", "stream_messages_per_s", "int"),
        (f"stream {chunk // 1024} KiB, MB/s", "stream_mb_per_s", "1"),
        (f"memory per idle conn, {params['idle_conns']} open (KB)", "idle_kb_per_conn", "1"),
        ("proxy CPU per msg, 1 conn (µs)", "cpu_us_per_msg_1conn", "1"),
        (f"proxy CPU per msg, {conns} conns (µs)", "cpu_us_per_msg_conns", "1"),
        ("proxy CPU per msg, stream (µs)", "cpu_us_per_msg_stream", "1"),
    ]
    anchors = [
        a
        for a in ("direct", "gateway-plain", "nginx", "bare")
        if a in variants and "gateway" in variants
    ]
    header = ["gateway hop", *variants, *(f"gateway ÷ {a}" for a in anchors), "target"]
    rows = []
    for label, metric, kind in rows_spec:
        cells = [label]
        for variant in variants:
            value = medians.get(variant, {}).get(metric)
            if variant == "direct" and metric.startswith("cpu_"):
                cells.append(NA)  # no proxy to measure
            elif variant == "direct" and metric == "idle_kb_per_conn":
                cells.append(_fmt(value, kind) + " *")
            else:
                cells.append(_fmt(value, kind))
        for anchor in anchors:
            comparable = not (anchor == "direct" and metric.startswith(("cpu_", "idle_", "rtt1_a")))
            ratio = ratios.get("gateway", {}).get(anchor, {}).get(metric)
            cells.append(_ratio(ratio) if comparable else NA)
        cells.append(_hop_target(metric, medians, ratios, variants))
        rows.append(cells)
    notes = [
        "* direct: the echo backend's own memory per connection (there is no proxy).",
    ]
    if "gateway-plain" in variants:
        notes.append(
            'gateway-plain: the same gateway with gateway.fast_path "off" (uvicorn\'s own '
            "WebSocket path on the client hop); gateway ÷ gateway-plain is the fast path's effect."
        )
    if "bare" in variants:
        notes.append(
            "bare: the barest proxy on the gateway's own stack (raw ASGI on uvicorn + a "
            "websockets client, nothing else): gateway ÷ bare is what monitoring, logging "
            "and limits cost."
        )
    for variant, reason in hop.get("skipped", {}).items():
        notes.append(f"{variant} skipped: {reason}")
    title = f"### Gateway hop ({_rounds(params['rounds'])}, medians)"
    return [title, markdown_table(header, rows), "\n".join(notes)]


def _hop_target(
    metric: str,
    medians: dict[str, dict[str, float | None]],
    ratios: dict[str, dict[str, dict[str, float | None]]],
    variants: list[str],
) -> str:
    gateway = medians.get("gateway", {})
    to_nginx = ratios.get("gateway", {}).get("nginx", {})
    match metric:
        case "rtt1_added_p50_us":
            return _check(gateway.get(metric), f"≤ {ADDED_RTT_TARGET_US:.0f} µs", upper=200.0)
        case "conns_round_trips_per_s" | "stream_messages_per_s":
            if "nginx" not in variants:
                return f"≥ {RATIO_TARGET}× nginx: {NA}"
            return _check(to_nginx.get(metric), f"≥ {RATIO_TARGET}× nginx", lower=RATIO_TARGET)
        case "idle_kb_per_conn":
            return _check(gateway.get(metric), f"≤ {IDLE_KB_TARGET:.0f} KB", upper=IDLE_KB_TARGET)
    return ""


def speech_tables(speech: dict[str, Any]) -> list[str]:
    params = speech["params"]
    stack = speech["medians"].get("stack", {})
    engine = speech["medians"].get("engine", {})
    start = speech["worker_start_s"]["median"]
    ttfa_ratio = stack.get("ttfa_over_engine_p50")
    ttfa_target = _check(stack.get("ttfa_p50_ms"), f"≤ {TTFA_TARGET_MS:.0f} ms", upper=100.0)
    ratio_target = _check(
        ttfa_ratio, f"≤ {TTFA_OVER_ENGINE_TARGET}× engine", upper=TTFA_OVER_ENGINE_TARGET
    )
    rows = [
        [
            "time to first byte p50 (ms)",
            _fmt(stack.get("ttfa_p50_ms"), "int"),
            _fmt(engine.get("first_chunk_p50_ms"), "int"),
            _ratio(ttfa_ratio),
            f"{ttfa_target}; {ratio_target}",
        ],
        [
            "time to first audible sample p50 (ms, -40 dBFS)",
            _fmt(stack.get("ttfa_audible_p50_ms"), "int"),
            _fmt(engine.get("first_audible_p50_ms"), "int"),
            _ratio(_div(stack.get("ttfa_audible_p50_ms"), engine.get("first_audible_p50_ms"))),
            "",
        ],
        [
            "time to first audio p95 (ms)",
            _fmt(stack.get("ttfa_p95_ms"), "int"),
            _fmt(engine.get("first_chunk_p95_ms"), "int"),
            _ratio(_div(stack.get("ttfa_p95_ms"), engine.get("first_chunk_p95_ms"))),
            "",
        ],
        [
            "engine: whole first sentence p50 (ms)",
            "",
            _fmt(engine.get("first_sentence_p50_ms"), "int"),
            "",
            "",
        ],
        [
            "real-time factor p50",
            _fmt(stack.get("rtf_p50"), "3"),
            _fmt(engine.get("rtf_p50"), "3"),
            _ratio(_div(stack.get("rtf_p50"), engine.get("rtf_p50"))),
            "",
        ],
        ["late frames, one stream at a time", _fmt(stack.get("late_frames"), "int"), "", "", ""],
        [
            "worker start to ready (s)",
            _fmt(start, "2"),
            "",
            "",
            _check(start, f"< {WORKER_START_TARGET_S:.0f} s", upper=WORKER_START_TARGET_S),
        ],
    ]
    header = ["speech path", "through the stack", "engine alone", "stack ÷ engine", "target"]
    title = (
        f"### Speech path (voice {speech['voice']!r}, {params['lines']} lines, "
        f"{_rounds(params['rounds'])}, medians)"
    )
    level_rows = []
    for level in params["levels"]:
        med = speech["levels"].get(str(level), {})
        rounds = [r for r in speech["level_rounds"] if r["level"] == level]
        level_rows.append(
            [
                str(level),
                _fmt(med.get("ttfa_p50_ms"), "int"),
                _fmt(med.get("ttfa_p95_ms"), "int"),
                _fmt(med.get("rtf_p50"), "3"),
                _fmt(med.get("worker_cpu_per_audio_s"), "3"),
                str(sum(r["late_frames"] for r in rounds)),
                str(max((r["streams_with_late_frames"] for r in rounds), default=0)),
                _fmt(max((r["worst_late_ms"] for r in rounds), default=None), "int"),
            ]
        )
    level_header = [
        "concurrent streams",
        "TTFA p50 (ms)",
        "TTFA p95 (ms)",
        "RTF p50",
        "worker CPU ÷ audio",
        "late frames (all rounds)",
        "streams with late frames (worst round)",
        "longest gap (ms)",
    ]
    best = speech["realtime_streams"]
    settings = speech.get("worker_settings", {})
    verdict = _check(float(best), f"≥ {STREAMS_TARGET}", lower=float(STREAMS_TARGET))
    summary = (
        f"**Real-time streams on this machine: {best}** (largest level with no late frame in "
        f"any round, nor at any level below it; target {verdict}; levels tried: "
        f"{', '.join(map(str, params['levels']))}; worker: max_concurrent "
        f"{settings.get('max_concurrent', '?')}, {settings.get('frame_ms', '?')} ms frames)"
    )
    return [
        title,
        markdown_table(header, rows),
        markdown_table(level_header, level_rows),
        summary,
    ]


def edge_tables(edge: dict[str, Any]) -> list[str]:
    """The edge scenario: each part that ran (auth: bench/edge_auth.py)."""
    parts: list[str] = []
    if "auth" in edge:
        parts.extend(edge_auth_tables(edge["auth"]))
    if "fairness" in edge:
        from .edge_fairness import render as fairness_table  # it imports this module

        parts.append(fairness_table(edge["fairness"]))
    if "memory" in edge:
        memory = edge["memory"]
        params = memory["params"]
        rows = [
            ["at rest", _fmt(memory["baseline_mb"], "1")],
            [
                f"{params['conns']} connections each sending a "
                f"{params['fragment_bytes'] // 2**20} MB fragmented message",
                _fmt(memory["fragments_mb"], "1"),
            ],
            [
                f"{params['conns']} connections each sending a "
                f"{params['header_bytes'] // 2**20} MB request head",
                _fmt(memory["headers_mb"], "1"),
            ],
        ]
        parts += ["### Edge: gateway memory under attack", markdown_table(["", "RSS (MB)"], rows)]
    if "refused" in edge:
        from .edge_refused import render as refused_table

        parts += ["### Edge: keyless clients", refused_table(edge["refused"])]
    if "limits" in edge:
        from .edge_limits import render as limits_table

        parts += ["### Edge: limits shared on Redis", limits_table(edge["limits"])]
    return parts


def edge_auth_tables(auth: dict[str, Any]) -> list[str]:
    """The edge scenario's authentication part (bench/edge_auth.py)."""
    medians, ratios = auth["medians"], auth["ratios"]
    rows_spec = [
        ("connect p50 (µs)", "connect_p50_us", "int"),
        ("connect p99 (µs)", "connect_p99_us", "int"),
        ("gateway CPU per connect (µs)", "cpu_us_per_connect", "int"),
        ("of which the edge check (µs)", "resolve_us", "1"),
        (f"RTT {auth['params']['text_bytes']} B p50 (µs)", "rtt_p50_us", "int"),
        ("gateway CPU per message (µs)", "cpu_us_per_msg", "1"),
    ]
    authed = list(auth["variants"][1:])
    header = ["edge: authentication", *auth["variants"], *(f"{v} ÷ anonymous" for v in authed)]
    rows = []
    for label, metric, kind in rows_spec:
        cells = [label]
        cells += [_fmt(medians.get(v, {}).get(metric), kind) for v in auth["variants"]]
        cells += [_ratio(ratios.get(v, {}).get(metric)) for v in authed]
        rows.append(cells)
    title = (
        f"### Edge: the cost of authentication ({_rounds(auth['params']['rounds'])}, "
        f"{auth['params']['connects']} connects per variant, {auth['tenants']} tenants, medians)"
    )
    note = (
        "anonymous: the gateway without tenants; the others: the gateway with tenants, the "
        "credential as an Authorization header, an ?api_key= parameter or a ?ticket=. "
        "A connect includes the backend dial; messages are never re-checked."
    )
    return [title, markdown_table(header, rows), note]


def voices_tables(voices: dict[str, Any]) -> list[str]:
    """Scenario ``voices``: per voice, first byte vs first audible sample, stack vs engine,
    timing on vs off, concurrency, Poisson arrivals, viseme/level agreement."""
    rows, load_rows = [], []
    for name, voice in voices["voices"].items():
        one = voice["one_at_a_time"]
        poisson = voice.get("poisson") or {}
        agreement = voice["visemes"]
        rows.append(
            [
                f"{name} ({voice['engine']['name']})",
                _fmt(one["stack_ttfb_p50_ms"], "1"),
                _fmt(one["stack_ttfa_audible_p50_ms"], "1"),
                _fmt(one["engine_first_audible_p50_ms"], "1"),
                _ratio(one["stack_over_engine_audible_p50"]),
                _fmt(one["engine_first_chunk_p50_ms"], "1"),
                _fmt(one["engine_without_timing_first_chunk_p50_ms"], "1"),
                _fmt(one["engine_rtf_p50"], "3"),
                _fmt(one["engine_without_timing_rtf_p50"], "3"),
                _fmt(agreement.get("vowel_share_loud"), "2"),
                _fmt(agreement.get("n_share_loud"), "2"),
            ]
        )
        for level in voice["levels"]:
            load_rows.append(
                [
                    name,
                    str(level["level"]),
                    _fmt(level["ttfb_p50_ms"], "1"),
                    _fmt(level["ttfa_audible_p50_ms"], "1"),
                    _fmt(level["ttfa_audible_p95_ms"], "1"),
                    str(level["late_frames"]),
                ]
            )
        if poisson:
            load_rows.append(
                [
                    name,
                    f"Poisson {poisson['arrivals']} at {poisson['rate_per_s']:.1f}/s "
                    f"(~{poisson['mean_concurrent'] or 0:.0f} at once)",
                    _fmt(poisson["ttfb_p50_ms"], "1"),
                    _fmt(poisson["ttfa_audible_p50_ms"], "1"),
                    _fmt(poisson["ttfa_audible_p95_ms"], "1"),
                    str(poisson["late_frames"]),
                ]
            )
    header = [
        "voice",
        "stack TTFB p50 ms",
        "stack first audible p50 ms",
        "engine first audible p50 ms",
        "stack / engine (audible)",
        "engine 1st chunk ms (timing on)",
        "(timing off)",
        "engine RTF (on)",
        "(off)",
        "vowel marks on loud frames",
        "n marks on loud frames",
    ]
    capacity = ", ".join(
        f"{name}: {voice['realtime_streams']}" for name, voice in voices["voices"].items()
    )
    words = ", ".join(
        f"{name} {voice['words']['exact']}/{voice['words']['utterances']}"
        for name, voice in voices["voices"].items()
        if voice.get("words", {}).get("timed")  # results from before word timing have none
    )
    notes = [f"Word tracks exactly the words sent, in order, inside the audio: {words}."]
    return [
        "## Voices: first byte vs first audible sample (-40 dBFS), per voice",
        markdown_table(header, rows),
        "## Voices under load",
        markdown_table(
            ["voice", "streams", "TTFB p50 ms", "audible p50 ms", "audible p95 ms", "late frames"],
            load_rows,
        ),
        f"Largest level with no late frame: {capacity}.",
        *(notes if words else []),
    ]


def browser_tables(browser: dict[str, Any]) -> list[str]:
    params = browser["params"]
    med = browser["medians"].get("browser", {})
    gap = med.get("heard_minus_python_audible_p50_ms")
    rows = [
        [
            "first audible sample p50 (ms, -40 dBFS)",
            _fmt(med.get("heard_audible_p50_ms"), "int"),
            _fmt(med.get("python_audible_p50_ms"), "int"),
            _check(gap, f"{_fmt(gap, 'int')} ms", upper=BROWSER_OVER_PYTHON_MS),
        ],
        [
            "first sample p50 (ms; Python: first PCM byte)",
            _fmt(med.get("heard_ttfa_p50_ms"), "int"),
            _fmt(med.get("python_ttfa_p50_ms"), "int"),
            _ratio(med.get("heard_over_python_p50")),
        ],
        [
            "time to first audio p95 (ms)",
            _fmt(med.get("heard_ttfa_p95_ms"), "int"),
            _fmt(med.get("python_ttfa_p95_ms"), "int"),
            _ratio(_div(med.get("heard_ttfa_p95_ms"), med.get("python_ttfa_p95_ms"))),
        ],
        ["page: speak -> first frame p50 (ms)", _fmt(med.get("first_frame_p50_ms"), "int"), "", ""],
        ["page: jitter buffer p50 (ms)", _fmt(med.get("jitter_p50_ms"), "int"), "", ""],
        ["page: output latency p50 (ms)", _fmt(med.get("output_latency_p50_ms"), "int"), "", ""],
        ["page: latest frame vs real time (ms)", _fmt(med.get("late_max_ms"), "int"), "", ""],
        ["underruns heard in the page", _fmt(med.get("underruns"), "int"), "", ""],
    ]
    target = f"page - Python (≤ {BROWSER_OVER_PYTHON_MS:.0f} ms) / ÷"
    header = ["browser", "heard in the page", "Python client", target]
    title = (
        f"### Browser (voice {browser['voice']!r}, {params['lines']} lines, "
        f"{_rounds(params['rounds'])}, medians): speak pressed -> first sample played by the "
        "audio clock, next to the Python client's speak sent -> first PCM byte"
    )
    return [title, markdown_table(header, rows)]


def _rounds(count: int) -> str:
    return "1 round" if count == 1 else f"{count} interleaved rounds"


def _fmt(value: float | None, kind: str) -> str:
    if value is None:
        return NA
    if kind == "int":
        return f"{value:,.0f}"
    return f"{value:,.{int(kind)}f}"


def _ratio(value: float | None) -> str:
    return NA if value is None else f"{value:.2f}×"


def _div(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def _check(
    value: float | None, label: str, upper: float | None = None, lower: float | None = None
) -> str:
    if value is None:
        return f"{label}: {NA}"
    ok = (upper is None or value <= upper) and (lower is None or value >= lower)
    return f"{label}: {'met' if ok else 'missed'}"
