# gmmserve gRPC server image.
#
# Build: podman build --format docker -t gmmserve .
#        (--format docker keeps the HEALTHCHECK, which OCI images drop)
# Run:   podman run -d -p 50051:50051 -v gmmserve-data:/data gmmserve
#
# GMMSERVE_HOST and GMMSERVE_PORT set the listening address for both the
# server and the health check, so `-e GMMSERVE_PORT=N` with --network=host
# moves both. GMMSERVE_DATA_DIR and GMMSERVE_GRACE_S set --data-dir and
# --grace-s. Arguments after the image name are appended to `gmmserve serve`.

FROM python:3.11-slim AS deps

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# A virtual environment copies cleanly into the runtime stage. Debian's
# system pip installs into dist-packages, which a site-packages copy misses.
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src

# This stage installs the dependencies alone, read from pyproject.toml, and
# never sees the sources. A source change therefore reuses both this stage
# and the runtime stage's copy of its venv, which is most of the image.
COPY pyproject.toml ./
RUN python -c "import tomllib; \
project = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(project['dependencies']))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt


FROM deps AS wheel

COPY . .
RUN pip wheel --no-deps --wheel-dir /wheels .


FROM python:3.11-slim

LABEL org.opencontainers.image.title="gmmserve" \
      org.opencontainers.image.description="Synthetic Gaussian-mixture training data served over gRPC" \
      org.opencontainers.image.licenses="Apache-2.0"

# The slim image has no adduser, so use the shadow tools.
RUN groupadd --gid 10001 gmmserve \
    && useradd --uid 10001 --gid gmmserve --home-dir /data \
        --no-create-home --shell /usr/sbin/nologin gmmserve \
    && mkdir /data \
    && chown gmmserve:gmmserve /data

COPY --from=deps /opt/venv /opt/venv
COPY --from=wheel /wheels /tmp/wheels
# --no-index keeps this step offline, and pip check fails the build when
# the wheel needs a dependency that the venv lacks.
RUN /opt/venv/bin/pip install --no-index --no-deps --no-cache-dir \
        --disable-pip-version-check /tmp/wheels/*.whl \
    && /opt/venv/bin/pip check \
    && rm -rf /tmp/wheels
COPY scripts/container_healthcheck.py /opt/gmmserve/healthcheck.py

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    GMMSERVE_HOST=0.0.0.0 \
    GMMSERVE_PORT=50051 \
    GMMSERVE_DATA_DIR=/data \
    GMMSERVE_GRACE_S=8

USER gmmserve
WORKDIR /data
VOLUME /data
EXPOSE 50051

HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["/opt/venv/bin/python", "/opt/gmmserve/healthcheck.py"]

# `exec` replaces the shell, so the server is PID 1 and receives the
# SIGTERM of `podman stop` itself. GMMSERVE_GRACE_S stays below the 10 s
# that `docker stop` and `podman stop` wait before SIGKILL, so open RPCs
# are ended by the server and it exits with status 0.
ENTRYPOINT ["/bin/sh", "-c", "exec gmmserve serve --host \"$GMMSERVE_HOST\" --port \"$GMMSERVE_PORT\" --data-dir \"$GMMSERVE_DATA_DIR\" --grace-s \"$GMMSERVE_GRACE_S\" \"$@\"", "gmmserve"]
CMD []
