#!/bin/sh
# Container entry point: bring the schema up to date, then hand PID 1 to gunicorn
# (exec, so it receives SIGTERM from the runtime and shuts down gracefully).
set -eu

flask --app wsgi db upgrade

# gunicorn's default request line limit (4094 bytes) refuses a batch URL of 100 ids of 64
# hex digits (6.6 KB); 8190 is its largest, and what nginx admits (deploy/nginx.conf).
exec gunicorn --limit-request-line 8190 -c gunicorn.conf.py wsgi:app "$@"
