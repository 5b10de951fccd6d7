# Sourced by ./run, ./test and ./benchmark: make .venv and install the locked set into it
# when it is missing or when requirements.lock or pyproject.toml changed since the last
# install. Sets VENV. The lock (made by scripts/lock) pins every package of ".[all,dev]"
# with its hashes; the project itself is then installed on top without dependencies.
VENV="${AIVTUBER_VENV:-$PWD/.venv}"
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || { echo "error: Python 3.11 or newer is needed as python3" >&2; exit 1; }
# A dependency added to pyproject.toml without refreshing the lock would not be installed.
python3 scripts/lockstamp.py check || exit 1
stamp="$VENV/.installed-$(cat pyproject.toml requirements.lock | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
    echo "setting up $VENV from requirements.lock (first run or the lock changed)" >&2
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet --require-hashes -r requirements.lock
    # setuptools' editable build is chatty about the static/ data folder: shown on failure.
    "$VENV/bin/python" -m pip install --quiet --no-deps -e . >"$VENV/.install.log" 2>&1 \
        || { cat "$VENV/.install.log" >&2; exit 1; }
    # The riva engine's client, without its websockets<16 pin (see pyproject.toml, riva).
    "$VENV/bin/python" -m pip install --quiet --no-deps "nvidia-riva-client>=2.28,<3"
    rm -f "$VENV"/.installed-*
    touch "$stamp"
fi
export VENV
