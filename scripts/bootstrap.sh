# Sourced by ./run, ./test and ./benchmark: make .venv and install the locked set into it with
# uv when it is missing or when uv.lock, pyproject.toml or the wanted extras changed since the
# last install. The caller sets EXTRAS (default "all": what the stack runs; ./test adds the
# dev tools). Sets VENV.
#   uv.lock                  every package pinned and hashed (made by `uv lock`)
#   scripts/uv-requirements.txt  uv itself, pinned and hashed, installed with pip first
VENV="${AIVTUBER_VENV:-$PWD/.venv}"
EXTRAS="${EXTRAS:-all}"
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || { echo "error: Python 3.11 or newer is needed as python3" >&2; exit 1; }
extras_key=$(echo "$EXTRAS" | tr ' ' '+')
stamp="$VENV/.installed-$(cat pyproject.toml uv.lock scripts/uv-requirements.txt | sha1sum | cut -c1-12)-$extras_key"
if [ ! -f "$stamp" ]; then
    echo "setting up $VENV with the locked packages of extras: $EXTRAS (first run or the lock changed; about a minute)" >&2
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --require-hashes -r scripts/uv-requirements.txt
    extra_args=()
    for extra in $EXTRAS; do extra_args+=(--extra "$extra"); done
    # --locked: a pyproject.toml whose dependencies changed without `uv lock` stops here with
    # uv's own message. --inexact: ./run after ./test keeps the test tools.
    UV_PROJECT_ENVIRONMENT="$VENV" "$VENV/bin/uv" sync --locked --inexact --no-progress \
        "${extra_args[@]}" || exit 1
    rm -f "$VENV"/.installed-*
    touch "$stamp"
fi
export VENV
