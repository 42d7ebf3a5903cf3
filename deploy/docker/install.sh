#!/bin/sh
# Install the broker from the wheels in WHEEL_DIR into a fresh virtual environment at
# PREFIX, offline (nothing is fetched at this step), then make the install read-only:
# the broker runs as an unprivileged user that can write only its data volume.
# Usage: install.sh WHEEL_DIR PREFIX
set -eu
wheels=$1
prefix=$2
python -m venv "$prefix"
"$prefix/bin/python" -m pip install --disable-pip-version-check --quiet --no-index \
    --find-links "$wheels" "trio-broker[cluster]"
chmod -R a-w "$prefix"
