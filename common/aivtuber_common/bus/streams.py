"""Key names, entry IDs and entry encoding of the Redis bus.

A task's stream ``P:task:<id>`` uses explicit entry IDs, so that Redis itself decides every
race: an ``XADD`` with an ID not above the stream's last one fails. ::

    0-1        queued   the input handler, at submission (the task exists; cancel can end it)
    0-2        open     TaskOpen JSON, by the worker that takes the task
    <n+1>-0    frame n  the direct ingest's binary frame (header + PCM), "s": samples so far
    END_ID     end      TaskEnd JSON: whoever ends the task first (worker, cancel, the
                        worker that claims a dead one's task) wins; nothing after it fits

So a task never has two voices: a second worker's frame ``n`` collides with the first's,
frames after the end are refused, and a reader resumes at chunk ``c`` with ``XREAD`` after
``c-0``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "END_ID",
    "GROUP",
    "OPEN_ID",
    "QUEUED_ID",
    "Keys",
    "chunk_id_of",
    "frame_entry_id",
]

GROUP = "workers"
QUEUED_ID = "0-1"
OPEN_ID = "0-2"
END_ID = "18446744073709551615-0"  # the largest millisecond part Redis accepts
END_MS = 18446744073709551615

# Entry fields (bytes keys, as redis-py returns them with decode_responses=False).
KIND = b"k"
DATA = b"d"
SAMPLES = b"s"
K_QUEUED, K_OPEN, K_FRAME, K_END = b"queued", b"open", b"frame", b"end"


def frame_entry_id(chunk_id: int) -> str:
    return f"{chunk_id + 1}-0"


def chunk_id_of(entry_id: bytes | str) -> int | None:
    """The chunk a frame entry holds; None for the other entries."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    value = int(ms)
    if value == 0 or value == END_MS or seq != "0":
        return None
    return value - 1


@dataclass(frozen=True)
class Keys:
    prefix: str

    @property
    def tasks(self) -> str:
        return f"{self.prefix}:tasks"

    @property
    def cancel(self) -> str:
        return f"{self.prefix}:cancel"

    def task(self, task_id: str) -> str:
        return f"{self.prefix}:task:{task_id}"

    def text(self, task_id: str) -> str:
        """A streaming task's text: TaskText entries, in order (input handler -> worker)."""
        return f"{self.prefix}:text:{task_id}"

    def live(self, role: str, name: str) -> str:
        return f"{self.prefix}:live:{role}:{name}"

    def live_index(self, role: str) -> str:
        return f"{self.prefix}:live:{role}"


def is_id_collision(error: Exception) -> bool:
    """True for XADD's refusal of an ID not above the stream's top: someone wrote first."""
    return "equal or smaller" in str(error)
