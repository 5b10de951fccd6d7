"""docs/integrations.md's two agents are real code for the pinned frameworks: each parses,
stays under 30 lines, imports names that exist, and builds the plugins with keywords they
take. (Running them needs a LiveKit server, API keys and a microphone: not here.)"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from pathlib import Path

import pytest

from aivtuber_integrations.livekit import AIVTuberTTS
from aivtuber_integrations.pipecat import AIVTuberTTSService

DOC = Path(__file__).resolve().parent.parent / "docs" / "integrations.md"
PLUGINS = {"AIVTuberTTS": AIVTuberTTS, "AIVTuberTTSService": AIVTuberTTSService}


def agents() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)


def test_the_page_has_a_livekit_and_a_pipecat_agent_each_under_30_lines() -> None:
    blocks = agents()
    assert [("AIVTuberTTS(" in b, "AIVTuberTTSService(" in b) for b in blocks] == [
        (True, False),
        (False, True),
    ]
    assert all(len(block.splitlines()) < 30 for block in blocks)


@pytest.mark.parametrize("block", agents(), ids=["livekit", "pipecat"])
def test_an_agents_imports_exist_and_its_plugin_takes_its_keywords(block: str) -> None:
    tree = ast.parse(block)
    checked = 0
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            try:
                module = importlib.import_module(node.module)
            except ImportError as exc:
                # An extra the page names but the tests do not install (pyaudio for the
                # local audio transport; Pipecat re-raises it as an ImportError): only the
                # frameworks' own modules must import.
                missing = exc if isinstance(exc, ModuleNotFoundError) else exc.__cause__
                assert isinstance(missing, ModuleNotFoundError) and missing.name
                assert not missing.name.startswith(("pipecat", "livekit", "aivtuber"))
                continue
            for alias in node.names:
                assert hasattr(module, alias.name), f"{node.module}.{alias.name}"
                checked += 1
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) in PLUGINS:
            keywords = {k.arg: ast.literal_eval(k.value) for k in node.keywords if k.arg}
            inspect.signature(PLUGINS[node.func.id]).bind(**keywords)  # type: ignore[union-attr]
            assert keywords["url"].startswith("ws://") and keywords["voice"] == "heart"
            checked += 1
    assert checked >= 5
