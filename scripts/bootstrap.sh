# Sourced by ./run, ./test and ./benchmark: make .venv and install the project into it when it is
# missing or when pyproject.toml changed since the last install. Sets VENV.
VENV="${AIVTUBER_VENV:-$PWD/.venv}"
stamp="$VENV/.installed-$(sha1sum pyproject.toml | cut -c1-12)"
if [ ! -f "$stamp" ]; then
    echo "setting up $VENV (first run or pyproject.toml changed)" >&2
    python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || { echo "error: Python 3.11 or newer is needed as python3" >&2; exit 1; }
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -e ".[dev]"
    # The riva engine's client, without its websockets<16 pin (see pyproject.toml, riva).
    "$VENV/bin/python" -m pip install --quiet --no-deps "nvidia-riva-client>=2.28,<3"
    rm -f "$VENV"/.installed-*
    touch "$stamp"
fi
export VENV
