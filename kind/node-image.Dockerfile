# kind node image with containerd >= 2.2 (NRI v0.10+, CDI netDevices plumbing) and runc >= 1.4
# (applies CDI netDevices; older runc silently ignores them).
# Build: docker build -f kind/node-image.Dockerfile -t drakit/kind-node:v1.35.0 kind/
ARG KIND_NODE=kindest/node:v1.35.0
FROM ${KIND_NODE}
ARG CONTAINERD_VERSION=2.2.0
ARG RUNC_VERSION=1.4.0
ARG TARGETARCH=amd64
RUN set -eux; \
    curl -fsSL -o /tmp/containerd.tgz \
      "https://github.com/containerd/containerd/releases/download/v${CONTAINERD_VERSION}/containerd-${CONTAINERD_VERSION}-linux-${TARGETARCH}.tar.gz"; \
    tar -C /usr/local -xzf /tmp/containerd.tgz; rm /tmp/containerd.tgz; \
    curl -fsSL -o /usr/local/sbin/runc \
      "https://github.com/opencontainers/runc/releases/download/v${RUNC_VERSION}/runc.${TARGETARCH}"; \
    chmod 0755 /usr/local/sbin/runc; \
    containerd --version; runc --version
