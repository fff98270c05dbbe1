# syntax=docker/dockerfile:1
# The diskguard node agent. Build from the repository root:
#   docker build -t ghcr.io/example/diskguard:0.1.0 .
# Layers go from what changes least (Debian packages) to what changes most (our source).
FROM debian:bookworm-slim

WORKDIR /opt/diskguard

# Debian packages, from the same script CI and the demo run, so every CI run exercises
# this step's package list. python3-bpfcc provides the `bcc` module.
COPY scripts/install-system-deps.sh scripts/
RUN bash scripts/install-system-deps.sh runtime \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/*

# The virtualenv and Python dependencies, rebuilt only when pyproject.toml changes.
# setup-venv.sh uses Debian's python3 with --system-site-packages (so `import bcc` works)
# and installs diskguard editable, so this layer needs only stubs: an empty package (the
# editable finder maps `diskguard` to /opt/diskguard/diskguard, where the real source
# lands below) and an empty README.md (pyproject's readme, only the long description).
COPY pyproject.toml ./
COPY scripts/setup-venv.sh scripts/
RUN mkdir diskguard \
    && touch diskguard/__init__.py README.md \
    && bash scripts/setup-venv.sh runtime \
    && rm -rf /root/.cache/pip

# The eBPF program, found beside the package (diskguard/sampler/bpf.py: default_source).
COPY bpf/ bpf/
COPY diskguard/ diskguard/
RUN .venv/bin/python -m compileall -q diskguard

# Root, privileged in the DaemonSet: the agent writes other containers' cgroup files.
USER root
ENV PYTHONUNBUFFERED=1
# So `kubectl exec ds/diskguard -n diskguard-system -- diskguard doctor` finds the command.
ENV PATH=/opt/diskguard/.venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
ENTRYPOINT ["/opt/diskguard/.venv/bin/diskguard"]
CMD ["run"]
