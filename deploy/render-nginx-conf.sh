#!/bin/sh
# Prints deploy/nginx.conf: the front (`flask nginx-config`, crew7/front) for
# docker-compose.yml's addresses and the app's default settings, in a clean environment
# (no CREW7_* variables, an empty instance folder) so the file depends on the code only.
#   deploy/render-nginx-conf.sh > deploy/nginx.conf      (make nginx-conf)
# tests/test_deploy.py fails when the file differs from what this prints.
set -eu
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
instance=$(mktemp -d)
trap 'rm -rf "$instance"' EXIT
env -i PATH="$PATH" HOME="${HOME:-/}" PYTHONPATH="$PWD" CREW7_INSTANCE_PATH="$instance" \
    CREW7_CACHE_WARM_ON_START=false \
    "$python" -m flask --app wsgi nginx-config \
    --listen 0.0.0.0:80 --app app:8000 --redis redis:6379 --redis-db 0 \
    --redis-password "" --key-prefix "" --prefix /var/lib/crew7-nginx \
    --resolver 127.0.0.11 --access-log /dev/stdout --error-log /dev/stderr --module-dir /usr/lib/nginx/modules
