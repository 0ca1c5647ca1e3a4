# The front: Debian's nginx with the Lua module and its Redis client (the packages the
# tests run with, deploy/system-packages.txt's `front` group), serving deploy/nginx.conf,
# which deploy/render-nginx-conf.sh renders from the app's code (`make nginx-conf`).
FROM debian:bookworm-slim

RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        nginx libnginx-mod-http-lua lua-nginx-redis curl ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /var/lib/crew7-nginx

COPY deploy/nginx.conf /etc/nginx/crew7.conf

EXPOSE 80
# SIGQUIT: nginx finishes the requests in flight, then exits.
STOPSIGNAL SIGQUIT
CMD ["nginx", "-e", "stderr", "-p", "/var/lib/crew7-nginx", "-c", "/etc/nginx/crew7.conf", "-g", "daemon off;"]
