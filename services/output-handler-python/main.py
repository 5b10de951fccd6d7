"""Start the output handler.

python services/output-handler-python/main.py [--config PATH] [--host H] [--port P]
    [--log-level debug|info|warning]
"""

from aivtuber_output.__main__ import main

if __name__ == "__main__":
    raise SystemExit(main())
