"""A streaming task's text as it arrives (``SubmitTask.stream``, then ``TaskText``), and
what of it is ready to be spoken.

The worker speaks a stream clause by clause: whatever has arrived up to the last finished
clause or sentence (the splitters' rules, :func:`~aivtuber_tts.splitting.ready_end`, or
:func:`~aivtuber_tts.splitting_ja.ready_end_japanese` for a Japanese voice) is handed to
the engine as soon as it is there. Text with no boundary yet waits, so the voice does not
say half a clause with the wrong prosody, until it has waited ``max_wait_s`` (and, while
audio plays, until the listener is within ``max_wait_s`` of running out). But while audio
plays it waits no longer than the listener can afford: once it has ``MIN_WORDS`` whole
words, it goes when the audio left is down to the engine's estimated time to make it plus
``JOIN_MARGIN_S`` (silence mid-reply is worse than a cut mid-clause). Either way it is
spoken up to its last whole word. A flush releases everything at once, and so does the end.

Released text is handed out in pieces sized to what the listener has queued (given the
engine's seconds per character): a neural engine makes a piece whole before its first
sample, so the first audio of a flushed seven-word buffer waited for all seven words. With
nothing playing, a piece has at most ``FIRST_PIECE_CHARS`` (a few words); then at most what
the engine makes in ``QUEUED_SHARE`` of the audio queued, cut at the last clause boundary
within that, else between words. The next piece is made while the one before plays, so
pieces grow as audio queues up and the listener never waits on a long one.

No I/O and no clock of its own: :class:`TextFeed` is told the time. The task's coroutine
(:meth:`aivtuber_tts.tasks.TaskManager`) waits on :attr:`TextFeed.changed`.
"""

from __future__ import annotations

import asyncio
import re

from .splitting import Scan, piece_end, ready_end, word_end
from .splitting_ja import ready_end_japanese, word_end_japanese

_WORD = re.compile(r"\S+")

__all__ = ["FIRST_PIECE_CHARS", "MIN_WORDS", "TextFeed"]

# With nothing playing: about four words, which Piper makes in 50-100 ms on one core.
FIRST_PIECE_CHARS = 24
# Later pieces: at most what the engine makes in this share of the audio queued (the rest
# covers waiting for a slot while other streams' pieces run, and the estimate's errors).
QUEUED_SHARE = 0.5
# Text with no boundary goes out early to keep the listener from running dry only once it
# has this many words (one lone word would be said with the wrong prosody for nothing).
MIN_WORDS = 3
# Before the listener runs dry, the engine's estimated time for the waiting text and this:
# the wait for a slot, the frames' way out.
JOIN_MARGIN_S = 0.15


class TextFeed:
    def __init__(self, first: str, max_wait_s: float, language: str, now: float) -> None:
        self.max_wait_s = max_wait_s
        self._japanese = language.lower().startswith("ja")
        self._buffer = ""
        self._scan = Scan()  # the boundary search's progress through _buffer
        self._since: float | None = None  # when the oldest unspoken text arrived
        self._flush = False
        self._released = 0  # characters at the buffer's front to speak whatever comes next
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

    def take(
        self, now: float, listener_ends_at: float | None, seconds_per_char: float = 0.0
    ) -> str | None:
        """The text to speak now, or None to wait (for more text, or :meth:`due`).

        ``listener_ends_at``: when the audio sent so far ends (None: none sent yet);
        ``seconds_per_char``: the engine's estimated synthesis time per character (0:
        unknown), which sizes the pieces (see the module's doc)."""
        self.changed.clear()
        buffer = self._buffer
        if not buffer.strip():
            self._flush = False
            self._released = 0
            return None
        if self._flush or self.closed:
            self._flush = False
            self._released = len(buffer)
        else:
            cut = self._ready_end(buffer)
            due = self.due(listener_ends_at, seconds_per_char, now)
            if cut == 0 and due is not None and now >= due:
                cut = word_end_japanese(buffer) if self._japanese else word_end(buffer)
            self._released = max(self._released, cut)
        if self._released == 0:
            return None
        cut = self._released
        if not self._japanese:  # kokoro_ja costs the same per call, whatever its length
            limit = self._piece_limit(now, listener_ends_at, seconds_per_char)
            cut = piece_end(buffer, cut, limit)
        self._released -= cut
        return self._cut(cut, now)

    def due(
        self,
        listener_ends_at: float | None,
        seconds_per_char: float = 0.0,
        now: float | None = None,
    ) -> float | None:
        """When text with no boundary may be spoken at its last word anyway: once it has
        waited ``max_wait_s``, but not while the listener still has more than that much
        audio to play (a boundary may yet come, and it sounds better); and, while audio
        plays (at ``now``), sooner if the listener would otherwise run dry before the
        engine has made it."""
        if self._since is None:
            return None
        due = self._since + self.max_wait_s
        if listener_ends_at is not None:
            due = max(due, listener_ends_at - self.max_wait_s)
            playing = now is None or now < listener_ends_at
            if playing and self._words_waiting() >= MIN_WORDS:
                lead = len(self._buffer) * seconds_per_char + JOIN_MARGIN_S
                due = min(due, max(self._since, listener_ends_at - lead))
        return due

    def wake_at(
        self, now: float, listener_ends_at: float | None, seconds_per_char: float = 0.0
    ) -> float | None:
        """After :meth:`take` gave nothing: when to look again without new text (None:
        only when text comes; a lone unfinished word waits for the rest of it)."""
        due = self.due(listener_ends_at, seconds_per_char, now)
        return due if due is not None and due > now else None

    def _piece_limit(
        self, now: float, listener_ends_at: float | None, seconds_per_char: float
    ) -> int:
        queued = 0.0 if listener_ends_at is None else listener_ends_at - now
        if queued <= 0:
            return FIRST_PIECE_CHARS
        if seconds_per_char <= 0:
            return len(self._buffer)  # the engine's pace is not known yet: no bound
        return max(FIRST_PIECE_CHARS, int(queued * QUEUED_SHARE / seconds_per_char))

    def _words_waiting(self) -> int:
        """Whole words (followed by white space) in the buffer, counted up to MIN_WORDS
        (this runs for every look; Japanese, with no spaces, counts as one word: it keeps
        waiting, as kokoro_ja costs as much for a fragment as for a clause)."""
        words = 0
        for match in _WORD.finditer(self._buffer):
            if match.end() == len(self._buffer) or words + 1 >= MIN_WORDS:
                return words + (match.end() < len(self._buffer))
            words += 1
        return words

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
