#!/usr/bin/env python3
"""Writes a single-layer image archive (docker-archive format) from a root filesystem directory,
so containerd can import it with no registry.

usage: mkimage.py OUT.tar NAME:TAG ROOTFS_DIR '["/entrypoint", "arg"]'
"""
import hashlib
import io
import json
import os
import sys
import tarfile


def layer_bytes(rootfs: str) -> bytes:
    """A reproducible tar of rootfs: sorted entries, root-owned, mtime 0."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as layer:
        for directory, subdirectories, files in os.walk(rootfs):
            subdirectories.sort()
            for name in sorted(subdirectories) + sorted(files):
                path = os.path.join(directory, name)
                info = layer.gettarinfo(path, "./" + os.path.relpath(path, rootfs))
                info.uid = info.gid = 0
                info.uname = info.gname = "root"
                info.mtime = 0
                if info.isreg():
                    with open(path, "rb") as content:
                        layer.addfile(info, content)
                else:
                    layer.addfile(info)
    return buffer.getvalue()


def main() -> None:
    out, reference, rootfs, command = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
    layer = layer_bytes(rootfs)
    diff_id = hashlib.sha256(layer).hexdigest()
    config = json.dumps({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": command, "Env": ["PATH=/bin:/sbin:/usr/bin:/"]},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + diff_id]},
    }).encode()
    config_id = hashlib.sha256(config).hexdigest()
    manifest = json.dumps([{
        "Config": config_id + ".json",
        "RepoTags": [reference],
        "Layers": [diff_id + "/layer.tar"],
    }]).encode()
    with tarfile.open(out, "w") as archive:
        for name, data in [(diff_id + "/layer.tar", layer), (config_id + ".json", config),
                           ("manifest.json", manifest)]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


if __name__ == "__main__":
    main()
