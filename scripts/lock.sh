#!/usr/bin/env bash
# Refresh constraints.txt, the lock every install uses (README commands, .ci/run, Dockerfile):
# pip-compile (pip-tools) resolves pyproject.toml's dependencies with the train and dev extras
# and scripts/lock-extra.in, keeping every pin already in constraints.txt unless told otherwise.
#
#   scripts/lock.sh                          # add what pyproject.toml gained, keep the rest
#   scripts/lock.sh --upgrade-package NAME   # move one package (repeatable)
#   scripts/lock.sh --upgrade                # move everything to the newest releases
#
# Then run the tests. After a grpcio-tools change, regenerate the gRPC code
# (python scripts/gen_protos.py) with the new release installed and commit it with the lock.
set -euo pipefail
cd "$(dirname "$0")/.."
tools="${PIP_TOOLS_VENV:-.venv-lock}"
if [ ! -x "$tools/bin/pip-compile" ]; then
  python3 -m venv "$tools"
  "$tools/bin/pip" install -q "pip-tools==7.6.2"
fi
CUSTOM_COMPILE_COMMAND="scripts/lock.sh" "$tools/bin/pip-compile" --quiet --strip-extras --allow-unsafe --no-emit-index-url \
  --no-emit-find-links --no-emit-trusted-host --extra train --extra dev \
  --output-file constraints.txt "$@" pyproject.toml scripts/lock-extra.in
