"""The benchmark suite: ``./bench`` (or ``python -m bench``) measures the gateway hop and the
speech path side by side with their anchors (a direct connection, nginx, the bare engine).

Modules::

    __main__        command line, runs the scenarios, prints the tables, writes the JSON
    stats           percentiles, medians over rounds, ratios
    procs           the processes a run starts: start, wait until ready, CPU/RSS, stop
    machine         what the results were measured on (CPUs, versions, date)
    report          the readable tables
    echo_backend    the WebSocket echo/stream backend of the gateway hop (its own process)
    load_client     the gateway hop's load generator (its own process, JSON lines on stdio)
    nginx           nginx configured as a loopback WebSocket proxy
    bare_proxy      the barest proxy on the gateway's own stack (--bare, its own process)
    gateway_hop     scenario 1: direct vs gateway vs nginx
    speech_client   a frontend speaking through the gateway, with a real-time playback model
    stack           the four services started from their main.py on ephemeral ports
    speech_path     scenario 2: time to first audio, real-time factor, concurrent streams;
                    the engine alone is the worker's own code (aivtuber_tts.engines.measure)
"""

BENCH_VERSION = 1
