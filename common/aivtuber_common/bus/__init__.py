"""The speech path on Redis Streams: the ``bus: {"kind": "redis"}`` transport.

What lives where (keys under the configured prefix ``P``; full description in docs/bus.md)::

    P:tasks                    stream: one entry per submitted task (SubmitTask JSON);
                               the workers read it as the consumer group "workers"
    P:task:<id>                stream: that task's life, with IDs chosen so that each
                               position can be written once only (see :mod:`.streams`)
    P:cancel                   pub/sub channel: "stop this task now" for its holder
    P:live:<role>:<name>       heartbeat keys with a TTL (workers, input handlers)
    P:live:<role>              set: the names of that role's heartbeat keys

Modules: :mod:`.link` (the client, availability, one log line per outage), :mod:`.streams`
(key names, entry IDs and entry encoding), :mod:`.liveness` (heartbeats). Each service's
side is in that service: ``aivtuber_input.redis_submitter``, ``aivtuber_tts.redis_bus``,
``aivtuber_output.redis_source``.

Exceptions::

    TransportError (aivtuber_common.transport)   code "tts_unavailable"
     └── BusUnavailable                          Redis cannot be reached (mapped from redis-py)
"""

from .link import BusUnavailable, RedisLink
from .streams import END_ID, OPEN_ID, QUEUED_ID, Keys, chunk_id_of, frame_entry_id

__all__ = [
    "END_ID",
    "OPEN_ID",
    "QUEUED_ID",
    "BusUnavailable",
    "Keys",
    "RedisLink",
    "chunk_id_of",
    "frame_entry_id",
]
