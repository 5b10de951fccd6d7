"""Start the TTS worker.

python services/tts-worker/main.py [--config PATH] [--host H] [--port P]
    [--log-level debug|info|warning]
"""

from aivtuber_tts.__main__ import main

if __name__ == "__main__":
    raise SystemExit(main())
