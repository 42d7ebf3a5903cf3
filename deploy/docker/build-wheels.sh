#!/bin/sh
# Build the broker's wheel and every wheel it needs (with the cluster extra) into DIR.
# The Dockerfile's build stage runs this; tests/test_container_recipe.py runs it too,
# so the image's install steps are tested on machines that cannot build images.
# Usage: build-wheels.sh SOURCE_DIR WHEEL_DIR
set -eu
src=$1
wheels=$2
python -m pip wheel --disable-pip-version-check --quiet --wheel-dir "$wheels" "$src[cluster]"
