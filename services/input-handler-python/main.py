"""Start the input handler.

python services/input-handler-python/main.py [--config PATH] [--host H] [--port P]
    [--log-level debug|info|warning]
"""

from aivtuber_input.__main__ import main

if __name__ == "__main__":
    raise SystemExit(main())
