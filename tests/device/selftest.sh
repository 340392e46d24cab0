#!/usr/bin/env bash
# Checks tests/device/ on a machine WITHOUT a GPU, before a GPU session spends its minutes on it:
#  - argument errors exit 64, and a missing libcuda exits 2 with a clear message;
#  - the ctypes structures match the real cuda.h (layout_check.c), where a C compiler and cuda.h
#    are found (CUDA_INCLUDE, else /usr/local/cuda*/include);
#  - the embedded PTX assembles (ptxas) and equals what nvcc makes of kernels.cu, where found;
#  - the whole parent/child/checkpoint flow against mock_libcuda.c, which is NOT CUDA: a pass,
#    a corrupted restore (exit 1), a driver too old (exit 3, twice), "not supported" (exit 3)
#    and nothing fitting (exit 4).
# Nothing here touches a GPU or claims a CUDA checkpoint. Exits non-zero on the first failure.
set -euo pipefail
cd "$(dirname "$0")/../.."
py=${PYTHON:-.venv/bin/python}
[ -x "$py" ] || py=python3
script=tests/device/cuda_checkpoint.py
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export MOCK_CUDA_STATE_DIR=$work
checks=0

fail() {
  echo "SELFTEST FAILED: $*" >&2
  [ -s "$work/err" ] && sed 's/^/  | /' "$work/err" >&2
  exit 1
}
pass() {
  checks=$((checks + 1))
  echo "ok: $*"
}
# expect_rc CODE CMD...: runs CMD, its stdout to $work/out and stderr to $work/err.
expect_rc() {
  local want=$1 rc=0
  shift
  "$@" >"$work/out" 2>"$work/err" || rc=$?
  [ "$rc" -eq "$want" ] || fail "exit $rc, expected $want: $*"
}
# json_true FILE EXPR: EXPR, in Python over the result d, must hold.
json_true() {
  "$py" -c 'import json, sys; d = json.load(open(sys.argv[1])); sys.exit(0 if eval("(" + sys.argv[2] + ")") else 1)' \
    "$1" "$2" || fail "$1: not true: $2"
}

# --- arguments and the no-libcuda path
expect_rc 0 "$py" "$script" --help
expect_rc 64 "$py" "$script" --sizes 1,x
grep -q "could not convert" "$work/err" || fail "--sizes 1,x: no clear message"
expect_rc 64 "$py" "$script" --sizes 6B
expect_rc 64 "$py" "$script" --child
pass "bad arguments exit 64 with a message"
expect_rc 2 "$py" "$script" --libcuda "$work/none/libcuda.so.1" --json "$work/nolib.json"
grep -q "no libcuda.so.1 could be loaded" "$work/err" || fail "no clear message without libcuda"
json_true "$work/nolib.json" 'd["exit_code"] == 2 and d["libcuda"] is None'
pass "no libcuda: exit 2, clear message, JSON written"
if ! { ldconfig -p 2>/dev/null | grep -q 'libcuda\.so\.1 '; }; then
  expect_rc 2 env -u OUT "$py" "$script"
  json_true "$work/out" 'd["exit_code"] == 2'
  pass "no libcuda on this machine: exit 2, JSON on stdout"
fi

# --- the structures against cuda.h
inc=${CUDA_INCLUDE:-}
if [ -z "$inc" ]; then
  for d in /usr/local/cuda/include /usr/local/cuda-*/include; do
    [ -f "$d/cuda.h" ] && { inc=$d; break; }
  done
fi
if [ -n "$inc" ] && command -v cc >/dev/null; then
  cc -Wall -Werror -I "$inc" -o "$work/layout_check" tests/device/layout_check.c
  "$work/layout_check" >"$work/layout_h.json"
  "$py" "$script" --layout >"$work/layout_py.json"
  "$py" -c 'import json, sys; a, b = (json.load(open(p)) for p in sys.argv[1:]); sys.exit(a != b)' \
    "$work/layout_h.json" "$work/layout_py.json" ||
    fail "ctypes layout differs from $inc/cuda.h: $(diff "$work/layout_h.json" "$work/layout_py.json")"
  pass "ctypes structures match $inc/cuda.h ($(grep -m1 'define CUDA_VERSION' "$inc/cuda.h"))"
else
  echo "NOT CHECKED: the struct layout (no cuda.h or no C compiler here)"
fi

# --- the PTX
"$py" "$script" --print-ptx >"$work/kernels.ptx"
if command -v ptxas >/dev/null; then
  for arch in sm_75 sm_90; do
    ptxas -arch=$arch -o "$work/kernels.cubin" "$work/kernels.ptx" 2>"$work/err" ||
      fail "ptxas -arch=$arch rejects the embedded PTX"
  done
  pass "the embedded PTX assembles for sm_75 and sm_90 ($(ptxas --version | tail -1))"
else
  echo "NOT CHECKED: the PTX (no ptxas here)"
fi
if command -v nvcc >/dev/null; then
  nvcc -ptx -arch=compute_75 -o "$work/fresh.ptx" tests/device/kernels.cu
  # nvcc's header comment and .version line aside, the text must be the same.
  sed -e '/^\/\//d' -e 's/^\.version .*/.version 7.0/' -e '/^$/d' "$work/fresh.ptx" >"$work/a"
  sed -e '/^\/\//d' -e '/^$/d' "$work/kernels.ptx" >"$work/b"
  diff -q "$work/a" "$work/b" >/dev/null || fail "the embedded PTX is not what nvcc makes of kernels.cu"
  pass "the embedded PTX is nvcc's output for kernels.cu"
else
  echo "NOT CHECKED: the PTX against kernels.cu (no nvcc here)"
fi

# --- the whole flow against the mock (NOT CUDA)
command -v cc >/dev/null || fail "a C compiler is needed to build mock_libcuda.c"
mkdir -p "$work/mock" "$work/mock-old"
cc -shared -fPIC -O2 -Wall -Wextra -Werror -o "$work/mock/libcuda.so.1" tests/device/mock_libcuda.c
cc -shared -fPIC -O2 -Wall -Wextra -Werror -DMOCK_NO_CHECKPOINT \
  -o "$work/mock-old/libcuda.so.1" tests/device/mock_libcuda.c
mock=("$py" "$script" --libcuda "$work/mock/libcuda.so.1" --no-nvidia-smi
  --chunk-bytes 8M --reserve-bytes 16M)
export MOCK_CUDA_TOTAL_MIB=128

expect_rc 0 "${mock[@]}" --sizes 4M,24M,1G --json "$work/ok.json"
json_true "$work/ok.json" '[r["status"] for r in d["runs"]] == ["ok", "ok", "skipped"]'
json_true "$work/ok.json" 'all(r["states"] == {"before": "running", "after_lock": "locked",
  "after_checkpoint": "checkpointed", "after_restore": "locked", "after_unlock": "running"}
  for r in d["runs"][:2])'
json_true "$work/ok.json" 'd["runs"][1]["child_setup"]["chunks"] == 3
  and d["runs"][1]["child_verify"]["checks"]["control_offset_1"] == 24 * 2**20 // 4'
json_true "$work/ok.json" 'all(set(r["phases_s"]) == {"lock", "checkpoint", "restore", "unlock"}
  and r["per_gib_s"]["checkpoint"] >= 0 for r in d["runs"][:2])'
json_true "$work/ok.json" 'd["gpu"]["name"].startswith("Mock GPU") and d["driver_api"] == "13.0"
  and d["gpu"]["uuid"] == "GPU-00112233-4455-6677-8899-aabbccddeeff"'
pass "mock: 4 MiB and 24 MiB checkpointed, restored and verified; 1 GiB skipped"

MOCK_CUDA_CORRUPT=1 expect_rc 1 "${mock[@]}" --sizes 4M --json "$work/corrupt.json"
json_true "$work/corrupt.json" '"after_restore: 1 mismatching words" in d["runs"][0]["error"]'
pass "mock: one word wrong after the restore fails the run (exit 1)"

MOCK_CUDA_DRIVER_VERSION=12040 expect_rc 3 "${mock[@]}" --sizes 4M --json "$work/old.json"
grep -q "needs driver r570" "$work/err" || fail "no clear message for an old driver"
expect_rc 3 "$py" "$script" --libcuda "$work/mock-old/libcuda.so.1" --sizes 4M --json "$work/old2.json"
json_true "$work/old2.json" 'len(d["checkpoint_api"]["missing_symbols"]) == 6'
pass "mock: a driver too old or without the symbols exits 3"

MOCK_CUDA_UNSUPPORTED=1 expect_rc 3 "${mock[@]}" --sizes 4M,8M --json "$work/unsup.json"
json_true "$work/unsup.json" '[r["status"] for r in d["runs"]] == ["unsupported"]'
pass "mock: CUDA_ERROR_NOT_SUPPORTED exits 3 and stops"

expect_rc 4 "${mock[@]}" --sizes 120M --json "$work/none.json"
json_true "$work/none.json" '"MiB free" in d["runs"][0]["reason"]'
expect_rc 4 "${mock[@]}" --sizes 4M --budget-s 1 --json "$work/budget.json"
pass "mock: nothing fitting memory or the time budget exits 4"

# SIGTERM (run.sh's timeout) during a checkpoint: the child is brought back and the run recorded.
MOCK_CUDA_CHECKPOINT_MS=3000 "${mock[@]}" --sizes 4M --json "$work/term.json" 2>"$work/err" &
parent=$!
for _ in $(seq 200); do
  grep -q "lock: " "$work/err" && break
  sleep 0.05 # polling for the log line, at most 10 s
done
grep -q "lock: " "$work/err" || fail "the interrupted run never reached the lock"
kill -TERM "$parent"
rc=0
wait "$parent" || rc=$?
[ "$rc" -eq 1 ] || fail "SIGTERM: exit $rc, expected 1"
json_true "$work/term.json" 'd["runs"][0]["status"] == "interrupted"
  and d["runs"][0]["recovered_state"] == "running" and d["runs"][0]["child_exit"] == 0'
pass "mock: SIGTERM mid-checkpoint restores and unlocks the child, ends it, exits 1"

# CRIU mode (step 2) with the mock: CRIU dumps and restores the whole child process, its pipes
# to the parent handed back by inode. No CUDA plugin is involved: that needs a GPU.
criu=${JHUB_SUSPEND_CRIU:-/opt/jhub-suspend/bin/criu}
[ -x "$criu" ] || criu=$(command -v criu || true)
if [ -n "$criu" ] && [ "$(id -u)" -eq 0 ]; then
  mkdir -p "$work/criu"
  expect_rc 0 "${mock[@]}" --sizes 4M,24M --criu "$criu" --criu-images "$work/criu" \
    --json "$work/criu.json"
  json_true "$work/criu.json" 'all(r["mode"] == "criu" and r["status"] == "ok"
    and r["states"]["after_dump"] == "gone" and r["child_exit"] == 0
    and r["child_verify"]["checks"]["after_restore"] == 0 for r in d["runs"])'
  [ -z "$(find "$work/criu" -maxdepth 1 -name 'cuda-checkpoint-criu-*')" ] ||
    fail "CRIU images left behind"
  pass "mock under CRIU ($criu): the child dumped, gone, restored, verified, ended"
  expect_rc 1 "${mock[@]}" --sizes 4M --criu false --criu-images "$work/criu" \
    --json "$work/criu-fail.json"
  json_true "$work/criu-fail.json" '"criu dump exited 1" in d["runs"][0]["error"]
    and d["runs"][0]["child_exit"] == 0'
  pass "mock: a failing criu dump fails the run and the child still ends cleanly"
else
  echo "NOT CHECKED: the CRIU mode (needs root and criu)"
fi

leftover=$(find "$work" -maxdepth 1 -name 'mockcuda-*' | wc -l)
[ "$leftover" -eq 0 ] || fail "$leftover mock state files left: a child did not end cleanly"
pass "every child ended and cleaned up"
echo "selftest: $checks checks passed (without a GPU; the mock is not CUDA)"
