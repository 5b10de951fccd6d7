"""A streaming task's text as it arrives (``SubmitTask.stream``, then ``TaskText``), and
what of it is ready to be spoken.

The worker speaks a stream clause by clause: whatever has arrived up to the last finished
clause or sentence (the splitters' rules, :func:`~aivtuber_tts.splitting.ready_end`, or
:func:`~aivtuber_tts.splitting_ja.ready_end_japanese` for a Japanese voice) is handed to
the engine as soon as it is there. Text with no boundary yet waits, so the voice does not
say half a clause with the wrong prosody; once it has waited ``max_wait_s`` (and the
listener is about to run out of audio) it is spoken up to its last whole word. A flush
takes everything at once, and so does the end.

No I/O and no clock of its own: :class:`TextFeed` is told the time. The task's coroutine
(:meth:`aivtuber_tts.tasks.TaskManager`) waits on :attr:`TextFeed.changed`.
"""

from __future__ import annotations

import asyncio

from .splitting import Scan, ready_end, word_end
from .splitting_ja import ready_end_japanese, word_end_japanese

__all__ = ["TextFeed"]


class TextFeed:
    def __init__(self, first: str, max_wait_s: float, language: str, now: float) -> None:
        self.max_wait_s = max_wait_s
        self._japanese = language.lower().startswith("ja")
        self._buffer = ""
        self._scan = Scan()  # the boundary search's progress through _buffer
        self._since: float | None = None  # when the oldest unspoken text arrived
        self._flush = False
        self._first = True  # nothing taken yet: the first clause goes alone
        self.closed = False  # the end came: no more text
        self.heard_at = now  # the last text, flush or end
        self.changed = asyncio.Event()
        self.add(first, flush=False, end=False, now=now)

    def add(self, text: str, *, flush: bool, end: bool, now: float) -> None:
        self.heard_at = now
        if text:
            if self._since is None and text.strip():
                self._since = now
            self._buffer += text
        self._flush = self._flush or flush
        self.closed = self.closed or end
        self.changed.set()

    @property
    def done(self) -> bool:
        """Ended, and every word of it taken."""
        return self.closed and not self._buffer.strip()

    def take(self, now: float, listener_ends_at: float | None) -> str | None:
        """The text to speak now, or None to wait (for more text, or :meth:`due`)."""
        self.changed.clear()
        buffer = self._buffer
        if not buffer.strip():
            self._flush = False
            return None
        if self._flush or self.closed:
            self._flush = False
            return self._cut(len(buffer), now)
        cut = self._ready_end(buffer)
        due = self.due(listener_ends_at)
        if cut == 0 and due is not None and now >= due:
            cut = word_end_japanese(buffer) if self._japanese else word_end(buffer)
        if cut == 0:
            return None
        return self._cut(cut, now)

    def due(self, listener_ends_at: float | None) -> float | None:
        """When text with no boundary may be spoken at its last word anyway: once it has
        waited ``max_wait_s``, but not while the listener still has more than that much
        audio to play (a boundary may yet come, and it sounds better)."""
        if self._since is None:
            return None
        due = self._since + self.max_wait_s
        if listener_ends_at is not None:
            due = max(due, listener_ends_at - self.max_wait_s)
        return due

    def wake_at(self, now: float, listener_ends_at: float | None) -> float | None:
        """After :meth:`take` gave nothing: when to look again without new text (None:
        only when text comes; a lone unfinished word waits for the rest of it)."""
        due = self.due(listener_ends_at)
        return due if due is not None and due > now else None

    def _ready_end(self, buffer: str) -> int:
        # The scan resumes where the last look stopped: a piece costs the work of its own
        # text, however much unspoken text waits before it (a listener far ahead can keep
        # a long text waiting while pieces keep coming).
        if self._japanese:
            return ready_end_japanese(buffer, self._first, scan=self._scan)
        return ready_end(buffer, scan=self._scan)

    def _cut(self, cut: int, now: float) -> str | None:
        taken, self._buffer = self._buffer[:cut], self._buffer[cut:]
        self._scan = Scan()  # a new text: the next search starts at its front
        # What is left arrived before now, but it is the start of a new clause: it waits
        # from now (an upper bound of its age; never spoken earlier than asked).
        self._since = now if self._buffer.strip() else None
        if not taken.strip():
            return None
        self._first = False
        return taken
