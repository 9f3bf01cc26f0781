#!/bin/sh
# Builds the Python package into a fresh virtualenv (target/py-venv) with `pip install .[test]`, exactly
# as a user would, and runs the pytest suite (python/tests). Extra arguments go to pytest.
#   scripts/test-python.sh                 unit tests; E2E tests skip
#   SMOLVM_E2E=1 scripts/test-python.sh    also boots VMs (root; a missing prerequisite fails)
set -eu
cd "$(dirname "$0")/.."
venv=target/py-venv
python=${PYTHON:-python3}
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/pip" install --quiet --upgrade pip
"$venv/bin/pip" install --quiet ".[test]"
# From the repository root `import smolvm` is the installed package (the sources are under python/).
exec "$venv/bin/python" -m pytest -p no:cacheprovider "$@" python/tests
