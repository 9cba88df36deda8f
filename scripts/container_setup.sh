#!/usr/bin/env bash
# Prepare rootful podman on a host without Docker, systemd or registry access.
#
# Usage: scripts/container_setup.sh
#        eval "$(scripts/container_setup.sh)"
#
# The script writes containers.conf and storage.conf into a work folder,
# then builds a local stand-in for python:3.11-slim from Debian bookworm
# (whose Python is 3.11) so that `FROM python:3.11-slim` resolves with
# `podman build --pull=never`. Steps whose result already exists are
# skipped, so a second run takes a few seconds.
#
# On success it prints the CONTAINERS_CONF and CONTAINERS_STORAGE_CONF
# export lines on stdout (and writes them to WORK/env); progress goes to
# stderr. Needs root and the Debian packages podman, buildah, runc and
# debootstrap.
#
# Environment:
#   GMMSERVE_PODMAN_DIR  work folder (default: .podman in the repository)
#   DEBIAN_MIRROR        bookworm mirror URL (default: the first URIs: value
#                        in /etc/apt/sources.list.d/debian.sources)
set -euo pipefail

readonly REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly WORK_DIR="${GMMSERVE_PODMAN_DIR:-${REPO_DIR}/.podman}"
readonly DEBIAN_SOURCES=/etc/apt/sources.list.d/debian.sources
readonly HOST_CA_DIR=/usr/local/share/ca-certificates
readonly BASE_IMAGE=localhost/bookworm-base
readonly PYTHON_IMAGE=docker.io/library/python:3.11-slim
readonly PYTHON_IMAGE_ALIAS=docker.io/library/python:3.11-slim-bookworm

log() {
    printf 'container_setup: %s\n' "$*" >&2
}

fail() {
    log "error: $*"
    exit 1
}

check_tools() {
    local tool
    for tool in podman runc debootstrap; do
        command -v "${tool}" >/dev/null \
            || fail "${tool} not found; run: apt-get install -y podman buildah runc debootstrap"
    done
    [[ "$(id -u)" == 0 ]] || fail "must run as root (rootful podman), got uid $(id -u)"
}

# Write the podman configuration. The files are rewritten on every run
# because they are cheap and depend on this host's limits.
write_config() {
    local nofile nproc
    nofile="$(ulimit -Hn)"
    nproc="$(ulimit -Hu)"
    # Default ulimits above the host's hard limits make `podman run` fail
    # with "setrlimit RLIMIT_NOFILE: Operation not permitted".
    if [[ "${nofile}" == unlimited ]]; then
        nofile=1048576
    fi
    if [[ "${nproc}" == unlimited || "${nproc}" -gt 32768 ]]; then
        nproc=32768
    fi
    mkdir -p "${WORK_DIR}/storage" "${WORK_DIR}/run"
    # runc, because crun rejects this host's hybrid cgroup v1/v2 layout.
    # cgroupfs and a file event log, because there is no systemd.
    cat >"${WORK_DIR}/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=${nofile}:${nofile}", "nproc=${nproc}:${nproc}"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
    cat >"${WORK_DIR}/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "${WORK_DIR}/storage"
runroot = "${WORK_DIR}/run"
EOF
    export CONTAINERS_CONF="${WORK_DIR}/containers.conf"
    export CONTAINERS_STORAGE_CONF="${WORK_DIR}/storage.conf"
}

debian_mirror() {
    if [[ -n "${DEBIAN_MIRROR:-}" ]]; then
        printf '%s\n' "${DEBIAN_MIRROR}"
        return
    fi
    [[ -f "${DEBIAN_SOURCES}" ]] \
        || fail "${DEBIAN_SOURCES} not found; set DEBIAN_MIRROR to a bookworm mirror URL"
    awk '$1 == "URIs:" { print $2; exit }' "${DEBIAN_SOURCES}"
}

import_base_image() {
    if podman image exists "${BASE_IMAGE}"; then
        log "${BASE_IMAGE} exists, skipping debootstrap"
        return
    fi
    local rootfs="${WORK_DIR}/rootfs"
    local mirror
    mirror="$(debian_mirror)"
    [[ -n "${mirror}" ]] || fail "no URIs: line in ${DEBIAN_SOURCES}; set DEBIAN_MIRROR"
    # A rootfs left by an interrupted run may be incomplete, so only a
    # marker written after debootstrap finished allows reusing it.
    if [[ ! -f "${WORK_DIR}/rootfs.complete" ]]; then
        log "debootstrap bookworm from ${mirror} into ${rootfs}"
        rm -rf "${rootfs}"
        if ! debootstrap --variant=minbase bookworm "${rootfs}" "${mirror}" \
            >"${WORK_DIR}/debootstrap.log" 2>&1; then
            tail -n 30 "${WORK_DIR}/debootstrap.log" >&2
            fail "debootstrap failed; see ${WORK_DIR}/debootstrap.log"
        fi
        if [[ -f "${DEBIAN_SOURCES}" ]]; then
            cp "${DEBIAN_SOURCES}" "${rootfs}/etc/apt/sources.list.d/debian.sources"
            rm -f "${rootfs}/etc/apt/sources.list"
        fi
        touch "${WORK_DIR}/rootfs.complete"
    fi
    log "importing ${rootfs} as ${BASE_IMAGE}"
    tar -C "${rootfs}" -c . | podman import - "${BASE_IMAGE}" >&2
}

build_python_image() {
    if podman image exists "${PYTHON_IMAGE}"; then
        log "${PYTHON_IMAGE} exists, skipping its build"
        return
    fi
    local context="${WORK_DIR}/python-base"
    rm -rf "${context}"
    mkdir -p "${context}/ca-certificates"
    # pip inside a build must trust the same CAs as this host, or its
    # HTTPS requests fail certificate checks.
    if compgen -G "${HOST_CA_DIR}/*.crt" >/dev/null; then
        cp "${HOST_CA_DIR}"/*.crt "${context}/ca-certificates/"
    fi
    cat >"${context}/Containerfile" <<'EOF'
FROM localhost/bookworm-base
ENV DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        python3 python3-pip python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && ln -sf /usr/bin/python3 /usr/local/bin/python \
    && ln -sf /usr/bin/python3 /usr/local/bin/python3 \
    && ln -sf /usr/bin/pip3 /usr/local/bin/pip \
    && rm -f /usr/lib/python3.11/EXTERNALLY-MANAGED
COPY ca-certificates/ /usr/local/share/ca-certificates/
RUN update-ca-certificates
CMD ["python3"]
EOF
    log "building ${PYTHON_IMAGE} on ${BASE_IMAGE}"
    podman build --format docker --network=host --pull=never \
        -t "${PYTHON_IMAGE}" -t "${PYTHON_IMAGE_ALIAS}" "${context}" >&2
}

write_env() {
    local lines
    lines="$(printf 'export CONTAINERS_CONF=%q\nexport CONTAINERS_STORAGE_CONF=%q\n' \
        "${CONTAINERS_CONF}" "${CONTAINERS_STORAGE_CONF}")"
    printf '%s\n' "${lines}" >"${WORK_DIR}/env"
    printf '%s\n' "${lines}"
}

main() {
    check_tools
    write_config
    import_base_image
    build_python_image
    write_env
    log "ready; podman images are stored in ${WORK_DIR}/storage"
}

main "$@"
