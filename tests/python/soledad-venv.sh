#!/usr/bin/env bash
# Builds the Python 2.7 virtualenv with the genuine Soledad 0.10.7 code that
# tests/tests/soledad_*.rs run (see soledad-requirements.txt), at DEST (default
# /var/cache/blobsync-ci/soledad-venv). Does nothing when DEST is complete (its .complete
# holds the checksum of soledad-requirements.txt); otherwise builds it from scratch. Needs Python 2.7 (BLOBSYNC_PYTHON27, else
# ~/.pyenv/versions/2.7.18/bin/python, else python2.7 on PATH) and PyPI.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dest="${1:-/var/cache/blobsync-ci/soledad-venv}"
py="${BLOBSYNC_PYTHON27:-}"
if [ -z "$py" ]; then
    if [ -x "$HOME/.pyenv/versions/2.7.18/bin/python" ]; then
        py="$HOME/.pyenv/versions/2.7.18/bin/python"
    else
        py="$(command -v python2.7 || true)"
    fi
fi
if [ -z "$py" ] || ! "$py" -c 'import sys; assert sys.version_info[:2] == (2, 7)' 2>/dev/null; then
    echo "soledad-venv.sh: no Python 2.7 found (set BLOBSYNC_PYTHON27); the Soledad tests will skip" >&2
    exit 0
fi
want="$(sha256sum "$here/soledad-requirements.txt" | cut -d' ' -f1)"
[ "$(cat "$dest/.complete" 2>/dev/null)" = "$want" ] && exit 0
rm -rf "$dest" "$dest.tools"
mkdir -p "$(dirname "$dest")"
pipq=(--quiet --no-cache-dir --disable-pip-version-check)
# virtualenv 20.15.1: the last release that runs on Python 2.7 (2.7 has no venv module).
"$py" -m pip install "${pipq[@]}" --target "$dest.tools" virtualenv==20.15.1 2>&1 | grep -v DEPRECATION || true
PYTHONPATH="$dest.tools" "$py" -m virtualenv --quiet "$dest"
rm -rf "$dest.tools"
"$dest/bin/python" -m pip install "${pipq[@]}" -r "$here/soledad-requirements.txt" 2>&1 | grep -v DEPRECATION || true
"$dest/bin/python" -W ignore -c 'import leap.soledad.server._blobs, treq; import sys
sys.path.insert(0, "'"$here"'/stubs"); import leap.soledad.client._db.blobs'
echo "$want" > "$dest/.complete"
echo "soledad-venv.sh: built $dest"
