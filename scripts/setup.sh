#!/usr/bin/env bash
# Installs everything Kelson's build, tests and one-machine stack need on a fresh Debian 12
# machine. Idempotent: packages already present are not reinstalled. Run as root.
set -euo pipefail

packages=(
  etcd-server          # the etcd storage backend and its tests
  protobuf-compiler    # protoc, for the etcd and CRI gRPC clients
  libprotobuf-dev      # protoc's well-known types (google/protobuf/*.proto) the etcd client imports
  ca-certificates
  git
  gnupg                # verifies OpenPGP-signed commits (GitOps)
  openssh-client       # ssh-keygen verifies SSH-signed commits (GitOps)
  openssh-server       # the GitOps tests serve a repository over ssh (never started as a service)
  containerd           # the container runtime the kubelet drives over CRI
  runc
  containernetworking-plugins  # bridge, host-local, portmap, firewall, loopback
  iptables
  nftables             # nft, which the service proxy programs Service routing with
  iproute2             # ip, with which the userspace proxy mode holds cluster IPs
  conntrack            # the service proxy clears UDP flows to endpoints that are gone
  curl                 # the Ingress tests request over HTTPS with SNI
  openssl              # the Ingress tests make a TLS certificate
  busybox-static       # the local busybox image the examples and tests run
  prometheus           # the metrics tests scrape our exporters with a real Prometheus
  prometheus-node-exporter  # the peer our node exporter is compared with (never started as a service)
  python3-fluent-logger  # the log pipeline's forward input is tested with fluent-logger
  bsdutils             # logger(1), the syslog client the log pipeline is tested with
  gcc                  # builds the static pause binary
  libc6-dev
)

missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
    || missing+=("$package")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # packages must not start services (openssh-server would listen on port 22, prometheus on 9090)
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy"
    trap 'rm -f "$policy"' EXIT
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# the official Python client, used by the end-to-end tests
if ! python3 -c 'import kubernetes' 2>/dev/null; then
  echo "setup: installing the kubernetes Python client"
  python3 -m pip install --quiet kubernetes
fi
# a Loki client library: the log pipeline's Loki push input is tested with it
if ! python3 -c 'import logging_loki' 2>/dev/null; then
  echo "setup: installing python-logging-loki"
  python3 -m pip install --quiet python-logging-loki
fi

scripts/setup-containerd.sh

if ! command -v cargo >/dev/null; then
  echo "setup: cargo is missing; install Rust (rustup) first" >&2
  exit 1
fi
