"""The gateway's I/O-free parts: close policy, backend order, forwarded headers."""

from __future__ import annotations

from websockets.exceptions import ConnectionClosedError, ConnectionClosedOK
from websockets.frames import Close

from aivtuber_common.config import GatewaySettings, RouteSettings
from aivtuber_gateway.headers import forwarded_request
from aivtuber_gateway.lifecycle import (
    End,
    Side,
    backend_end,
    client_end,
    short_reason,
    to_backend,
    to_client,
)
from aivtuber_gateway.routing import Route, RouteTable


def test_codes_that_cannot_be_sent_are_mapped() -> None:
    assert to_backend(client_end(1006, None)) == (1011, "client connection lost")
    assert to_backend(client_end(1005, "")) == (1000, "")  # close frame without a code
    assert to_backend(client_end(1005, None)) == (1011, "client connection lost")  # uvicorn
    assert to_client(End(Side.BACKEND, 1006, "x")) == (1011, "x")
    assert to_client(End(Side.BACKEND, 4000, "bye")) == (4000, "bye")


def test_a_close_reason_is_cut_to_fit_a_close_frame_on_a_character_boundary() -> None:
    reason = "é" * 100  # 200 bytes
    cut = short_reason(reason)
    assert len(cut.encode()) <= 123
    assert cut == "é" * 61


def test_the_backend_end_says_who_closed_first() -> None:
    by_backend = ConnectionClosedOK(Close(4000, "bye"), Close(4000, "bye"), True)
    assert backend_end(by_backend) == End(Side.BACKEND, 4000, "bye")
    by_our_client = ConnectionClosedError(None, Close(1011, "keepalive ping timeout"))
    assert backend_end(by_our_client) == End(Side.BACKEND, 1011, "backend: keepalive ping timeout")
    lost = ConnectionClosedError(None, None)
    assert backend_end(lost) == End(Side.BACKEND, 1006, "backend connection lost")


def route(balance: str, count: int = 3) -> Route:
    urls = [f"ws://127.0.0.1:{9000 + i}" for i in range(count)]
    return Route("r", RouteSettings(path="/ws/r", backends=urls, balance=balance))  # type: ignore[arg-type]


def test_round_robin_takes_turns_and_puts_down_backends_last() -> None:
    r = route("round_robin")
    firsts = [r.candidates(now=100.0)[0].url[-4:] for _ in range(6)]
    assert firsts == ["9000", "9001", "9002", "9000", "9001", "9002"]
    r.backends[1].mark_down(now=100.0)
    order = [b.url[-4:] for b in r.candidates(now=100.5)]
    assert order[-1] == "9001"  # down: only as a last resort
    assert [b.url[-4:] for b in r.candidates(now=1000.0)].count("9001") == 1  # up again later


def test_least_connections_prefers_the_emptiest_backend() -> None:
    r = route("least_connections")
    r.backends[0].open_connections = 5
    r.backends[1].open_connections = 1
    r.backends[2].open_connections = 3
    assert [b.url[-4:] for b in r.candidates(now=0.0)] == ["9001", "9002", "9000"]


def test_routes_match_their_path_patterns_in_order() -> None:
    table = RouteTable(GatewaySettings())
    assert table.match("/ws/input").name == "input"  # type: ignore[union-attr]
    assert table.match("/ws/output/123e4567").name == "output"  # type: ignore[union-attr]
    assert table.match("/ws/output/") is None
    assert table.match("/ws/inputs") is None
    backend = table.routes[1].backends[0]
    assert backend.target("/ws/output/a%20b", "x=1") == "ws://127.0.0.1:8002/ws/output/a%20b?x=1"
    assert backend.health_url == "http://127.0.0.1:8002/health"


def test_connection_listed_headers_are_dropped_too() -> None:
    scope = {
        "type": "websocket",
        "scheme": "ws",
        "client": ("10.1.2.3", 5555),
        "headers": [
            (b"Host", b"gw:8000"),
            (b"Connection", b"Upgrade, X-Secret-Hop"),
            (b"X-Secret-Hop", b"1"),
            (b"X-Request-ID", b"\x00bad"),
            (b"Origin", b"http://app"),
        ],
        "subprotocols": ["a", "b"],
    }
    request = forwarded_request(scope)
    names = [name for name, _ in request.headers]
    assert "x-secret-hop" not in names and "connection" not in names and "host" not in names
    assert dict(request.headers)["x-forwarded-for"] == "10.1.2.3"
    assert dict(request.headers)["origin"] == "http://app"
    assert request.request_id != "\x00bad" and len(request.request_id) == 32
    assert request.subprotocols == ["a", "b"]
