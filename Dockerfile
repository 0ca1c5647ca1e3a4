FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    CREW7_INSTANCE_PATH=/app/instance

WORKDIR /app

# Unprivileged runtime user; it owns only the instance folder.
RUN groupadd --system --gid 10001 crew7 \
    && useradd --system --uid 10001 --gid crew7 --home-dir /app --no-create-home crew7

# Package metadata and pins first, then the code (README.m[d]: copied when present).
COPY pyproject.toml setup.cfg constraints.txt README.m[d] ./
COPY crew7 ./crew7
RUN pip install -c constraints.txt . \
    && rm -rf build crew7.egg-info

COPY wsgi.py gunicorn.conf.py ./
COPY deploy/boot.sh ./deploy/boot.sh

# Flask's instance folder must be writable (and not inside site-packages).
RUN mkdir -p /app/instance && chown crew7:crew7 /app/instance

USER crew7

EXPOSE 8000
CMD ["./deploy/boot.sh"]
