"""Browser tickets: POST /v1/tickets issues them, ?ticket= spends them, on any replica."""

from __future__ import annotations

import time

import httpx
import pytest
from websockets.asyncio.client import connect

from aivtuber_gateway.tickets import TicketBook, TicketProblem
from tests.backends import EchoBackend
from tests.edge_support import ALICE_KEY, BOB_KEY, backend_info, edge_settings, header_values
from tests.gateway_support import closed_with, run_gateway

KEYS = {"alice": ALICE_KEY, "bob": BOB_KEY, "dotted.name": "dotted-key-0123456789"}


# --- the signed format, without sockets ----------------------------------------------------


def test_a_ticket_names_its_tenant_until_it_expires() -> None:
    now = [1_000_000.0]
    book = TicketBook(KEYS, 60, clock=lambda: now[0])
    ticket = book.issue("dotted.name")
    assert book.check(ticket) == "dotted.name"
    now[0] += 59
    assert book.check(ticket) == "dotted.name"
    now[0] += 1
    assert book.check(ticket) is TicketProblem.EXPIRED


def test_two_tickets_differ_and_carry_no_key() -> None:
    book = TicketBook(KEYS, 60)
    first, second = book.issue("alice"), book.issue("alice")
    assert first != second
    assert ALICE_KEY not in first and len(first) < 200


@pytest.mark.parametrize(
    "tamper",
    [
        lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"),  # the signature
        lambda t: t.replace(t.split(".")[2], str(int(t.split(".")[2]) + 3600)),  # the expiry
        lambda t: t.replace(t.split(".")[1], "Ym9i"),  # the tenant: "bob"
        lambda t: "t2" + t[2:],
        lambda t: t + ".x",
        lambda _: "",
        lambda _: "not a ticket",
        lambda t: t.replace(t.split(".")[2], "１２３"),  # unicode digits
        lambda t: t * 10,
    ],
    ids=["signature", "expiry", "tenant", "version", "extra", "empty", "junk", "digits", "long"],
)
def test_a_forged_or_altered_ticket_is_invalid(tamper: object) -> None:
    book = TicketBook(KEYS, 60)
    forged = tamper(book.issue("alice"))  # type: ignore[operator]
    assert book.check(forged) is TicketProblem.INVALID


def test_a_ticket_signed_with_another_key_or_for_an_unknown_tenant_is_invalid() -> None:
    ours = TicketBook(KEYS, 60)
    theirs = TicketBook({"alice": "some-other-key-0123456789", "carol": "c" * 20}, 60)
    assert ours.check(theirs.issue("alice")) is TicketProblem.INVALID
    assert ours.check(theirs.issue("carol")) is TicketProblem.INVALID


def test_rotating_a_tenant_key_revokes_its_tickets_only() -> None:
    before = TicketBook(KEYS, 60)
    alice, bob = before.issue("alice"), before.issue("bob")
    after = TicketBook({**KEYS, "alice": "rotated-alice-key-0123456789"}, 60)
    assert after.check(alice) is TicketProblem.INVALID
    assert after.check(bob) == "bob"


# --- over real sockets ---------------------------------------------------------------------


async def test_post_tickets_with_the_key_answers_201_and_the_ticket_opens_the_route() -> None:
    async with EchoBackend().running() as backend:
        async with run_gateway(edge_settings(backend.url)) as gateway:
            async with httpx.AsyncClient(base_url=gateway.http_url) as http:
                bearer = await http.post(
                    "/v1/tickets", headers={"Authorization": f"Bearer {ALICE_KEY}"}
                )
                by_header = await http.post("/v1/tickets", headers={"X-Api-Key": BOB_KEY})
            assert bearer.status_code == 201 and by_header.status_code == 201
            assert bearer.headers["cache-control"] == "no-store"
            body = bearer.json()
            assert set(body) == {"ticket", "expires_in"} and body["expires_in"] == 60
            url = f"{gateway.ws_url}/ws/echo?ticket={body['ticket']}&x=1"
            async with connect(url) as ws:
                info = await backend_info(ws)
                assert header_values(info, "x-aivtuber-tenant") == ["alice"]
                assert info["path"] == "/ws/echo?x=1"  # the ticket is not forwarded
                await ws.send("still open")
                assert await ws.recv() == "still open"
            # Good for more than one connection until it expires (input, then output).
            async with connect(url) as again:
                assert header_values(await backend_info(again), "x-aivtuber-tenant") == ["alice"]
            ticket = by_header.json()["ticket"]
            async with connect(f"{gateway.ws_url}/ws/echo?ticket={ticket}") as ws:
                assert header_values(await backend_info(ws), "x-aivtuber-tenant") == ["bob"]


async def test_only_a_key_in_a_header_mints_a_ticket() -> None:
    async with EchoBackend().running() as backend:
        async with run_gateway(edge_settings(backend.url)) as gateway:
            async with httpx.AsyncClient(base_url=gateway.http_url) as http:
                ticket = (await http.post("/v1/tickets", headers={"X-Api-Key": ALICE_KEY})).json()[
                    "ticket"
                ]
                answers = [
                    await http.post("/v1/tickets"),
                    await http.post("/v1/tickets", headers={"X-Api-Key": "wrong-key-0123456789"}),
                    await http.post("/v1/tickets", params={"api_key": ALICE_KEY}),
                    await http.post("/v1/tickets", params={"ticket": ticket}),
                    await http.post("/v1/tickets", headers={"Authorization": f"Bearer {ticket}"}),
                ]
                get = await http.get("/v1/tickets", headers={"X-Api-Key": ALICE_KEY})
    assert [answer.status_code for answer in answers] == [401] * 5
    assert all(answer.json()["code"] == "unauthorized" for answer in answers)
    assert answers[0].headers["www-authenticate"].startswith("Bearer")
    assert get.status_code == 405


async def test_an_expired_or_forged_ticket_is_closed_with_4401_and_the_backend_never_dialed() -> (
    None
):
    async with EchoBackend().running() as backend:
        settings = edge_settings(backend.url)
        # Signed with the real key, an hour ago: only its expiry is wrong.
        expired = TicketBook(KEYS, 60, clock=lambda: time.time() - 3600).issue("alice")
        forged = TicketBook({"alice": "guessed-key-0123456789"}, 60).issue("alice")
        async with run_gateway(settings) as gateway:
            got = []
            for ticket in (expired, forged, "garbage"):
                async with connect(f"{gateway.ws_url}/ws/echo?ticket={ticket}") as ws:
                    got.append(await closed_with(ws))
    assert got == [(4401, "ticket expired"), (4401, "invalid ticket"), (4401, "invalid ticket")]
    assert backend.accepted == 0


async def test_a_ticket_from_one_replica_is_accepted_by_another_with_the_same_config() -> None:
    async with EchoBackend().running() as backend:
        async with (
            run_gateway(edge_settings(backend.url)) as first,
            run_gateway(edge_settings(backend.url)) as second,
            run_gateway(edge_settings(backend.url, tenants=False)) as unrelated,
        ):
            async with httpx.AsyncClient() as http:
                answer = await http.post(
                    f"{first.http_url}/v1/tickets", headers={"Authorization": f"Bearer {ALICE_KEY}"}
                )
            ticket = answer.json()["ticket"]
            async with connect(f"{second.ws_url}/ws/echo?ticket={ticket}") as ws:
                assert header_values(await backend_info(ws), "x-aivtuber-tenant") == ["alice"]
            # A gateway configured without alice's key cannot check it: it serves that
            # client anonymously (no tenants there) and never as alice.
            async with connect(f"{unrelated.ws_url}/ws/echo?ticket={ticket}") as ws:
                info = await backend_info(ws)
                assert header_values(info, "x-aivtuber-tenant") == []
                assert "ticket" not in info["path"]


async def test_a_replica_with_another_key_for_the_tenant_refuses_its_tickets() -> None:
    async with EchoBackend().running() as backend:
        other = edge_settings(backend.url, alice_key="rotated-alice-key-0123456789")
        async with run_gateway(edge_settings(backend.url)) as first, run_gateway(other) as second:
            async with httpx.AsyncClient() as http:
                answer = await http.post(
                    f"{first.http_url}/v1/tickets", headers={"X-Api-Key": ALICE_KEY}
                )
            async with connect(f"{second.ws_url}/ws/echo?ticket={answer.json()['ticket']}") as ws:
                assert await closed_with(ws) == (4401, "invalid ticket")


async def test_without_tenants_post_tickets_says_tickets_are_not_needed() -> None:
    async with EchoBackend().running() as backend:
        async with run_gateway(edge_settings(backend.url, tenants=False)) as gateway:
            async with httpx.AsyncClient(base_url=gateway.http_url) as http:
                answer = await http.post("/v1/tickets", headers={"X-Api-Key": ALICE_KEY})
    assert answer.status_code == 404
    assert answer.json()["code"] == "tickets_disabled"
