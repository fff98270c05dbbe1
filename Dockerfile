# The diskguard node agent. Build from the repository root (classic builder or BuildKit):
#   docker build --build-arg VERSION=0.2.0 -t registry.example.com/diskguard:0.2.0 .
# Two stages: the builder makes a wheel install into a virtualenv; the final stage holds
# Debian's python3 and BCC (python3-bpfcc, not on PyPI) plus that virtualenv, copied to the
# same path - no pip, compilers, test fixtures' dependencies or build tools.
# (No "# syntax=" line: it would make BuildKit fetch a frontend image from a registry.)
FROM debian:bookworm-slim AS builder

ENV DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
    PIP_PROGRESS_BAR=off PIP_CERT=/etc/ssl/certs/ca-certificates.crt
RUN apt-get update -q \
    && apt-get install -y -q --no-install-recommends python3 python3-venv ca-certificates
# Building behind a TLS-intercepting proxy: its CA, if put in deploy/build-ca/, is trusted
# here (the builder stage only).
COPY deploy/build-ca/ /usr/local/share/ca-certificates/
RUN update-ca-certificates

# Dependencies first (pinned by the constraints file CI tests with), so a source edit does
# not reinstall them. The venv sees system site-packages: `import bcc` comes from Debian.
COPY scripts/constraints.txt /src/scripts/constraints.txt
COPY pyproject.toml /src/
RUN python3 -m venv --system-site-packages /opt/diskguard/venv \
    && python3 -c 'import tomllib; print("\n".join(tomllib.load(open("/src/pyproject.toml", "rb"))["project"]["dependencies"]))' \
        >/tmp/requirements.txt \
    && /opt/diskguard/venv/bin/pip install -c /src/scripts/constraints.txt -r /tmp/requirements.txt

# The package itself, non-editable, with the BPF program as package data. VERSION (a build
# argument) is what `diskguard --version` reports.
ARG VERSION=0.2.0.dev0
COPY README.md /src/
COPY bpf/ /src/bpf/
COPY diskguard/ /src/diskguard/
# VERSION must be a PEP 440 version (it becomes Python source and the wheel's version).
RUN echo "$VERSION" | grep -Eqx '[0-9]+(\.[0-9]+)*((a|b|rc)[0-9]+)?(\.post[0-9]+)?(\.dev[0-9]+)?(\+[a-z0-9]+(\.[a-z0-9]+)*)?' \
    || { echo "VERSION=$VERSION is not a PEP 440 version (e.g. 0.2.0, 0.3.0rc1, 0.3.0.dev4)" >&2; exit 1; }
# PIP_CONSTRAINT reaches pip's isolated build environment too: setuptools/wheel are pinned.
RUN printf '__version__ = "%s"\n' "$VERSION" >/src/diskguard/_version.py \
    && PIP_CONSTRAINT=/src/scripts/constraints.txt /opt/diskguard/venv/bin/pip install --no-deps /src \
    && /opt/diskguard/venv/bin/pip uninstall -y setuptools pip \
    && /opt/diskguard/venv/bin/diskguard --version

FROM debian:bookworm-slim

# Runtime packages only, from the same script CI and the demo run (python3, python3-bpfcc).
COPY scripts/install-system-deps.sh /tmp/
RUN bash /tmp/install-system-deps.sh runtime \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* /tmp/install-system-deps.sh

COPY --from=builder /opt/diskguard/venv /opt/diskguard/venv

ARG VERSION=0.2.0.dev0
LABEL org.opencontainers.image.title="diskguard" \
      org.opencontainers.image.description="Kubernetes node agent: per-container disk IOPS and bytes/s limits in the kernel (cgroup v1 blkio / v2 io.max), eBPF IO measurement" \
      org.opencontainers.image.version="$VERSION" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/debian:bookworm-slim"

# Root, privileged in the DaemonSet: the agent writes other containers' cgroup files.
USER root
ENV PYTHONUNBUFFERED=1 \
    PATH=/opt/diskguard/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# So `kubectl exec ds/diskguard -n diskguard-system -- diskguard doctor` finds the command.
ENTRYPOINT ["/opt/diskguard/venv/bin/diskguard"]
CMD ["run"]
