#!/usr/bin/env bash
# Configures and starts containerd for the kubelet on this machine (no systemd needed), writes the
# CNI pod network, and imports the local pause and busybox images into containerd's k8s.io
# namespace, so pods run with no registry. Idempotent; run as root after the packages are in.
set -euo pipefail
cd "$(dirname "$0")/.."

state_dir=/var/lib/kelson-setup
mkdir -p "$state_dir" /etc/containerd /etc/cni/net.d

# containerd's CRI plugin. restrict_oom_score_adj: root on these VMs lacks CAP_SYS_RESOURCE and
# cannot lower oom_score_adj, which the sandbox asks for.
containerd_config='version = 2
[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "localhost/pause:local"
    restrict_oom_score_adj = true
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "/usr/lib/cni"
      conf_dir = "/etc/cni/net.d"
  [plugins."io.containerd.internal.v1.opt"]
    path = "/var/lib/containerd/opt"
'
cni_config='{
  "cniVersion": "1.0.0",
  "name": "podnet",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true, "hairpinMode": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.88.0.0/16", "gateway": "10.88.0.1"}]],
              "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}},
    {"type": "firewall"}
  ]
}
'
restart=false
if [[ "$(cat /etc/containerd/config.toml 2>/dev/null)" != "${containerd_config%$'\n'}" ]]; then
  printf '%s' "$containerd_config" >/etc/containerd/config.toml
  restart=true
fi
if [[ "$(cat /etc/cni/net.d/10-podnet.conflist 2>/dev/null)" != "${cni_config%$'\n'}" ]]; then
  printf '%s' "$cni_config" >/etc/cni/net.d/10-podnet.conflist
fi
sysctl -q -w net.ipv4.ip_forward=1 >/dev/null 2>&1 || echo "setup: warning: cannot enable ip_forward" >&2

running=$(pgrep -x containerd || true)
if [[ -n "$running" && "$restart" == true ]]; then
  echo "setup: restarting containerd with the new config"
  kill "$running"
  while kill -0 "$running" 2>/dev/null; do sleep 0.1; done
  running=""
fi
if [[ -z "$running" ]]; then
  echo "setup: starting containerd (log: /var/log/containerd.log)"
  setsid nohup containerd >>/var/log/containerd.log 2>&1 </dev/null &
fi
for _ in $(seq 1 100); do
  ctr version >/dev/null 2>&1 && break
  sleep 0.1
done
ctr version >/dev/null 2>&1 || { echo "setup: containerd did not start; see /var/log/containerd.log" >&2; exit 1; }

# Local images, rebuilt when their inputs change.
images_key=$(cat scripts/images/pause.c scripts/images/mkimage.py /bin/busybox | sha256sum | cut -c1-16)
present=$(ctr -n k8s.io images ls -q)
if [[ "$(cat "$state_dir/images" 2>/dev/null)" != "$images_key" ]] \
  || ! grep -qx 'localhost/pause:local' <<<"$present" \
  || ! grep -qx 'docker.io/library/busybox:latest' <<<"$present"; then
  echo "setup: building and importing the pause and busybox images"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  mkdir -p "$work/pause" "$work/busybox/bin" "$work/busybox/tmp" "$work/busybox/etc" "$work/busybox/var/www"
  gcc -Os -static -s -o "$work/pause/pause" scripts/images/pause.c
  python3 scripts/images/mkimage.py "$work/pause.tar" localhost/pause:local "$work/pause" '["/pause"]'
  cp /bin/busybox "$work/busybox/bin/busybox"
  for applet in $(/bin/busybox --list); do
    [[ "$applet" == busybox ]] || ln -sf busybox "$work/busybox/bin/$applet"
  done
  chmod 1777 "$work/busybox/tmp"
  echo 'root:x:0:0:root:/root:/bin/sh' >"$work/busybox/etc/passwd"
  echo 'nobody:x:65534:65534:nobody:/:/bin/false' >>"$work/busybox/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$work/busybox/etc/group"
  python3 scripts/images/mkimage.py "$work/busybox.tar" docker.io/library/busybox:latest "$work/busybox" '["sh"]'
  ctr -n k8s.io images import "$work/pause.tar" >/dev/null
  ctr -n k8s.io images import "$work/busybox.tar" >/dev/null
  ctr -n k8s.io images tag --force docker.io/library/busybox:latest docker.io/library/busybox:1.35 >/dev/null
  echo "$images_key" >"$state_dir/images"
fi
