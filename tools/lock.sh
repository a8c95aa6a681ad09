#!/usr/bin/env bash
# Regenerate constraints.txt: a full lock (exact == pins) of everything that
#   pip install '.[training,serving,dicomweb,scale,dev]'
# installs with Python 3.11. Run it as `make lock`.
#
# How: copy the source tree to a temp dir, install it into a fresh temp venv with pip (pip, not uv or
# poetry: only pip sees the local torch 2.14.1 / torchvision 0.29.1 wheels), then
# `pip freeze --all --exclude-editable` minus pip and the project itself. The temp venv (~6.5 GB with
# the CUDA torch build) is removed afterwards. The gpu extra is deliberately not locked.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
extras="${LOCK_EXTRAS:-training,serving,dicomweb,scale,dev}"
out="${1:-$repo/constraints.txt}"

if ! "$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    echo "lock: $python is $("$python" -V 2>&1); the lock is for Python 3.11" >&2
    exit 1
fi

tmp="$(mktemp -d "${TMPDIR:-/tmp}/triage-lock.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

# Build from a copy so the build does not write build/ or *.egg-info into the working tree.
mkdir "$tmp/src"
tar -C "$repo" --exclude=./.venv --exclude=./.git --exclude=./demo-out --exclude=./build \
    --exclude='*.egg-info' --exclude=__pycache__ -cf - . | tar -C "$tmp/src" -xf -

"$python" -m venv "$tmp/venv"
echo "lock: installing .[$extras] into a temp venv (several minutes, ~6.5 GB)..." >&2
"$tmp/venv/bin/pip" install --no-input "$tmp/src[$extras]" >"$tmp/install.log" 2>&1 || {
    tail -40 "$tmp/install.log" >&2
    exit 1
}

"$tmp/venv/bin/pip" freeze --all --exclude-editable \
    | grep -Eiv '^(pip|triage)([ =@]|$)' >"$tmp/pins.txt"

# Sanity checks: exact pins only, and the torch pair that lies on this machine's disk.
if grep -Ev '^[A-Za-z0-9._-]+==[^ ]+$' "$tmp/pins.txt"; then
    echo "lock: the lines above are not exact == pins" >&2
    exit 1
fi
grep -qx 'torch==2.14.1' "$tmp/pins.txt" || { echo "lock: torch is not 2.14.1" >&2; exit 1; }
grep -qx 'torchvision==0.29.1' "$tmp/pins.txt" || { echo "lock: torchvision is not 0.29.1" >&2; exit 1; }

{
    cat <<HEADER
# constraints.txt: full lock (exact == pins) for Python 3.11 on linux x86_64 of every package that
#     pip install '.[$extras]'
# installs. GENERATED, do not edit by hand: \`make lock\` (tools/lock.sh) regenerates it by installing
# that into a fresh temp venv with pip and keeping \`pip freeze --all --exclude-editable\` minus pip and
# the project itself.
#
# Used as \`pip install -c constraints.txt -e '.[EXTRAS]'\` (see Makefile): a constraint only pins a
# version, it installs nothing that the chosen extras do not ask for, so one lock serves every subset.
# torch==2.14.1 and torchvision==0.29.1 (and the nvidia-*, cuda-* and triton wheels that come with that
# CUDA build) are taken by pip from this machine's local wheel store; any other torch downloads GBs.
# Not locked: the gpu extra (onnxruntime-gpu, tensorrt), installed only on GPU machines; it conflicts
# with onnxruntime.
HEADER
    cat "$tmp/pins.txt"
} >"$out.tmp"
mv "$out.tmp" "$out"
echo "lock: wrote $out ($(grep -vc '^#' "$out") pins)" >&2
