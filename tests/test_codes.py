"""One registry for error codes and one for close codes: every code the services send is
spelled through them, and docs/protocol.md's code tables are generated from the registry."""

from __future__ import annotations

import io
import re
import tokenize
from pathlib import Path
from types import ModuleType

from aivtuber_common.closecodes import AppCloseCode
from aivtuber_common.codes import MEANINGS, ErrorCode
from aivtuber_common.refusal import Refusal
from tests.support import load_script

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted(
    path
    for pattern in ("services/*/aivtuber_*/**/*.py", "common/aivtuber_common/**/*.py")
    for path in ROOT.glob(pattern)
    if path.name not in ("codes.py", "closecodes.py")
)
LOG_CALL = re.compile(r"\blog\.(debug|info|warning|error|exception)\($")


def _code_docs() -> ModuleType:
    return load_script("code_docs")


def test_docs_protocol_md_lists_every_code_as_the_registry_says() -> None:
    docs = _code_docs()
    current = (ROOT / "docs" / "protocol.md").read_text("utf-8")
    assert current == docs.updated(current), (
        "docs/protocol.md is stale: run .venv/bin/python scripts/code_docs.py"
    )
    block = docs.render()
    assert all(f"| `{code.value}` |" in block for code in ErrorCode)


def test_every_code_has_a_meaning() -> None:
    assert [code for code in ErrorCode if not MEANINGS.get(code)] == []


def _tokens(path: Path) -> list[tokenize.TokenInfo]:
    source = path.read_text("utf-8")
    skipped = (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT)
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    return [token for token in tokens if token.type not in skipped]


def test_no_service_spells_an_error_code_as_a_bare_string() -> None:
    values = {code.value for code in ErrorCode}
    found = []
    for path in SOURCES:
        tokens = _tokens(path)
        for index, token in enumerate(tokens):
            text = token.string
            if token.type != tokenize.STRING or not re.fullmatch(r"\"[a-z_]+\"", text):
                continue
            if text.strip('"') not in values:
                continue
            before = "".join(t.string for t in tokens[max(0, index - 4) : index])
            if LOG_CALL.search(before):
                continue  # a log event's name, not a code
            found.append(f"{path.relative_to(ROOT)}:{token.start[0]}: {text}")
    assert found == []


def test_no_service_spells_a_close_code_as_a_bare_number() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{token.start[0]}: {token.string}"
        for path in SOURCES
        for token in _tokens(path)
        if token.type == tokenize.NUMBER
        and re.fullmatch(r"44[0-9]{2}", token.string)
        and token.string != "4000"  # 4000 + HTTP status: a back end's 4xx passed on
    ]
    assert found == []


def test_a_refusal_reads_the_same_on_http_a_websocket_and_the_wire() -> None:
    refusal = Refusal(429, ErrorCode.TOO_MANY_CONNECTIONS, "too many connections (limit 2)")
    assert refusal.close_code is AppCloseCode.TOO_MANY
    assert refusal.openai_body()["error"]["type"] == "rate_limit_error"
    assert refusal.wire().model_dump() == {
        "code": "too_many_connections",
        "message": "too many connections (limit 2)",
    }
    back = Refusal.from_wire(429, refusal.wire())
    assert (back.status, back.code, back.message) == (429, refusal.code, refusal.message)
    response = Refusal(401, ErrorCode.UNAUTHORIZED, "no key").response()
    assert response.status_code == 401 and "www-authenticate" in response.headers
