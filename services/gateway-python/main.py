"""Start the gateway.

python services/gateway-python/main.py [--config PATH] [--host H] [--port P]
    [--log-level debug|info|warning]
"""

from aivtuber_gateway.__main__ import main

if __name__ == "__main__":
    raise SystemExit(main())
