#!/usr/bin/env bash
# The one command for a session lent a GPU machine (the `device` tool), run from the repo root:
#
#   run(command="bash tests/device/run.sh", timeout_s=560)
#
# Step 2 (CRIU and its CUDA plugin, see criu_cuda.md) is a second command, only once a .criu/
# folder has been built here and is carried:
#
#   run(command="bash tests/device/run.sh criu", carry=[".criu"], timeout_s=560)
#
# Nothing needs carrying: cuda_checkpoint.py is standard-library Python. It writes, under $OUT
# (at most 8 files come back): machine.txt (the GPU, driver, kernel, memory), layout.txt (the
# ctypes structures against the machine's cuda.h), cuda_checkpoint.log and cuda_checkpoint.json.
# Time: sizes 1, 8 and 32 GiB within a 400 s budget (sizes that would not fit it are skipped, and
# the JSON is rewritten after each size); `timeout` stops it at 480 s, inside the 560 s given to
# the call, which leaves the 15 minutes of device time room for the machine's start and one
# rerun of a short variant, e.g. CUDA_CKPT_ARGS="--sizes 1".
# Before spending device time, run tests/device/selftest.sh here (no GPU needed).
# Files in tests/device/ are never named test_*.py: pytest must not collect them.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 2
OUT=${OUT:-$(mktemp -d)}
export OUT PYTHONUNBUFFERED=1
py=$(command -v python3)
echo "results in $OUT"

{
  date -u
  uname -a
  cat /proc/version
  grep -E '^(MemTotal|MemAvailable)' /proc/meminfo
  "$py" --version
  nvidia-smi
  nvidia-smi --query-gpu=name,uuid,driver_version,memory.total,persistence_mode,mig.mode.current,compute_mode --format=csv
  nvidia-smi -q | grep -iE 'MPS|Addressing Mode|Virtualization' || true
  cat /proc/driver/nvidia/version
  ldconfig -p | grep -E 'libcuda\.so'
  ls -l /dev/nvidia* 2>&1
  command -v criu cuda-checkpoint nvcc cc gcc
} >"$OUT/machine.txt" 2>&1

# The ctypes structures against this machine's cuda.h (a mismatch is reported, not fatal: the
# script passes zeroed structures with only the lock timeout set).
{
  inc=""
  for d in /usr/local/cuda/include /usr/local/cuda-*/include; do
    [ -f "$d/cuda.h" ] && { inc=$d; break; }
  done
  cc=$(command -v cc || command -v gcc || true)
  if [ -n "$inc" ] && [ -n "$cc" ] &&
    "$cc" -I "$inc" -o /tmp/layout_check tests/device/layout_check.c; then
    /tmp/layout_check >/tmp/layout_h.json
    "$py" tests/device/cuda_checkpoint.py --layout >/tmp/layout_py.json
    if "$py" -c 'import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:])
for k in sorted(set(a) | set(b)):
    if a.get(k) != b.get(k):
        print(f"{k}: cuda.h {a.get(k)}, ctypes {b.get(k)}")
sys.exit(a != b)' /tmp/layout_h.json /tmp/layout_py.json; then
      echo "layout: the ctypes structures match $inc/cuda.h"
    else
      echo "layout: MISMATCH against $inc/cuda.h (above)"
    fi
  else
    echo "layout: not checked (cuda.h: ${inc:-none}, compiler: ${cc:-none})"
  fi
} >"$OUT/layout.txt" 2>&1
cat "$OUT/layout.txt"

if [ "${1:-}" = criu ]; then
  # Step 2: the whole process dumped and restored by the carried CRIU and its CUDA plugin (which
  # runs NVIDIA's cuda-checkpoint, found on the PATH). Layout of .criu/: criu_cuda.md.
  c=$PWD/.criu
  [ -x "$c/criu" ] || { echo "no .criu/criu: build it here (criu_cuda.md) and carry .criu"; exit 2; }
  export PATH=$c/bin:$PATH
  criu="$c/ld-linux-x86-64.so.2 --library-path $c/lib $c/criu"
  # shellcheck disable=SC2086 # $criu is a command line
  { $criu --version; $criu check; echo "criu check: $?"; cuda-checkpoint --help | head -3; } \
    >"$OUT/criu_check.txt" 2>&1
  cat "$OUT/criu_check.txt"
  # shellcheck disable=SC2086 # CUDA_CKPT_ARGS is a list of arguments
  timeout -k 20 480 "$py" tests/device/cuda_checkpoint.py --budget-s 400 --sizes 1,8 \
    --criu "$criu" --criu-libdir "$c/plugins" --seconds-per-gib 15 \
    --json "$OUT/criu_cuda.json" ${CUDA_CKPT_ARGS:-} 2>&1 | tee "$OUT/criu_cuda.log"
  rc=${PIPESTATUS[0]}
  echo "cuda_checkpoint.py --criu exit status: $rc"
  exit "$rc"
fi

# shellcheck disable=SC2086 # CUDA_CKPT_ARGS is a list of arguments
timeout -k 20 480 "$py" tests/device/cuda_checkpoint.py --budget-s 400 ${CUDA_CKPT_ARGS:-} 2>&1 |
  tee "$OUT/cuda_checkpoint.log"
rc=${PIPESTATUS[0]}
echo "cuda_checkpoint.py exit status: $rc (0 passed, 1 failed, 2 no GPU, 3 no checkpoint API, 4 nothing fitted, 124 timed out)"
exit "$rc"
