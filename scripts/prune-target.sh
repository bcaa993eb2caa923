#!/usr/bin/env bash
# Keeps a reused cargo target directory from filling the disk: each rebuild of a test or binary
# leaves the previous executable (about 200 MB each) in deps/, and incremental state grows without
# bound. Removes every executable in deps/ that a newer one of the same name replaces, and the
# incremental caches, then reports what is left. Safe on an empty or missing directory.
set -euo pipefail
dir="${1:-${CARGO_TARGET_DIR:-target}}"
for profile in debug release; do
    deps="$dir/$profile/deps"
    [ -d "$deps" ] || continue
    # newest first; keep the first file of each name, remove the older ones
    ls -t "$deps" | grep -E '^[a-z0-9_-]+-[0-9a-f]{16}$' | awk '{ n = $0; sub(/-[0-9a-f]+$/, "", n); if (seen[n]++) print }' |
        while read -r f; do rm -f "$deps/$f"; done
    rm -rf "$dir/$profile/incremental"
done
if [ -d "$dir" ]; then
    echo "prune-target: $(du -sh "$dir" | cut -f1) in $dir; $(df -h "$dir" | awk 'NR==2 {print $4}') free"
fi
