#!/bin/sh
# Line coverage of ringd/ over the default test suite, the daemons included: every
# Python process the tests start (ringd start, its guard `python -m ringd.guard`,
# ringctl) runs under coverage through coverage.py's subprocess patch, as
# configured in [tool.coverage.run] of pyproject.toml. At teardown the tests'
# daemons are stopped with SIGTERM (bench/coverage_teardown.py) so that they
# write their data. Prints the report per module; the data stays in
# build/coverage/ (`coverage html` there for the lines missed).
#
#   sh bench/coverage.sh [PYTEST ARGS...]      e.g. sh bench/coverage.sh tests/test_groups.py
set -u
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
mkdir -p build/coverage
COVERAGE_FILE="$PWD/build/coverage/.coverage"
export COVERAGE_FILE
rm -f "$COVERAGE_FILE" "$COVERAGE_FILE".*
"$py" -m coverage run -m pytest -p bench.coverage_teardown "$@"
status=$?
"$py" -m coverage combine --quiet
"$py" -m coverage report
exit $status
