#!/bin/sh
# Container entry point: bring the schema up to date, then hand PID 1 to gunicorn
# (exec, so it receives SIGTERM from the runtime and shuts down gracefully).
set -eu

flask --app wsgi db upgrade

exec gunicorn -c gunicorn.conf.py wsgi:app "$@"
