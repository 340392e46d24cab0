#!/usr/bin/env python3
"""Checkpoint and restore a live CUDA process through the driver API, on a real GPU.

Run by hand on a machine with an NVIDIA GPU (tests/device/run.sh, through the `device` tool);
never in CI and never collected by pytest. Standard library only (ctypes): nothing to carry.

For each size (default 1, 8 and 32 GiB, as the GPU's memory allows) a child process (this
script with --child) allocates device memory with plain cuMemAlloc (never managed memory),
fills it with a position-dependent pattern by a PTX kernel, adds a constant with a second
kernel and counts mismatches with a third, and then waits. The parent drives
cuCheckpointProcessLock, cuCheckpointProcessCheckpoint, cuCheckpointProcessRestore and
cuCheckpointProcessUnlock on the child's pid, checking cuCheckpointProcessGetState between the
phases. The child then verifies its data and computes with it again. Reported: seconds per
phase and per GiB, the driver, the GPU. The result is JSON, written to $OUT/cuda_checkpoint.json
when $OUT is set (else to stdout), rewritten after every size so that a run cut short keeps
what it measured.

Exit status: 0 every size that ran passed; 1 a mismatch or a failed call; 2 no usable libcuda
or GPU; 3 the driver has no checkpoint API (too old, or it answers "not supported"); 4 every
size was skipped; 64 bad arguments.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import select
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any, ClassVar

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_NO_CUDA = 2
EXIT_NO_CHECKPOINT_API = 3
EXIT_NOTHING_RAN = 4
EXIT_USAGE = 64

GIB = 1 << 30
MIB = 1 << 20
# The checkpoint API appeared in the CUDA 12.8 driver API (display driver r570).
MIN_CHECKPOINT_DRIVER_API = 12080
CHECKPOINT_SYMBOLS = (
    "cuCheckpointProcessGetRestoreThreadId",
    "cuCheckpointProcessGetState",
    "cuCheckpointProcessLock",
    "cuCheckpointProcessCheckpoint",
    "cuCheckpointProcessRestore",
    "cuCheckpointProcessUnlock",
)
LIBCUDA_DIRS = (
    "/usr/local/nvidia/lib64",
    "/usr/local/nvidia/lib",
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib64",
    "/usr/lib/wsl/lib",
)

# CUresult values this script names itself (cuGetErrorName names the rest).
CUDA_SUCCESS = 0
CUDA_ERROR_OUT_OF_MEMORY = 2
CUDA_ERROR_STUB_LIBRARY = 34
CUDA_ERROR_NO_DEVICE = 100
CUDA_ERROR_NOT_SUPPORTED = 801
ERROR_NAMES = {
    0: "CUDA_SUCCESS",
    1: "CUDA_ERROR_INVALID_VALUE",
    2: "CUDA_ERROR_OUT_OF_MEMORY",
    3: "CUDA_ERROR_NOT_INITIALIZED",
    34: "CUDA_ERROR_STUB_LIBRARY",
    100: "CUDA_ERROR_NO_DEVICE",
    218: "CUDA_ERROR_INVALID_PTX",
    222: "CUDA_ERROR_UNSUPPORTED_PTX_VERSION",
    401: "CUDA_ERROR_ILLEGAL_STATE",
    500: "CUDA_ERROR_NOT_FOUND",
    600: "CUDA_ERROR_NOT_READY",
    800: "CUDA_ERROR_NOT_PERMITTED",
    801: "CUDA_ERROR_NOT_SUPPORTED",
    803: "CUDA_ERROR_SYSTEM_DRIVER_MISMATCH",
    999: "CUDA_ERROR_UNKNOWN",
}

# CUprocessState (cuda.h, CUDA 12.8 and later).
PROCESS_STATES = {0: "running", 1: "locked", 2: "checkpointed", 3: "failed"}
RUNNING, LOCKED, CHECKPOINTED = "running", "locked", "checkpointed"

CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT = 16
CU_JIT_ERROR_LOG_BUFFER = 5
CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES = 6


# The argument structures, field for field as cuda.h (CUDA 13.0) declares them. Each is 64 bytes
# in every CUDA release that has them; reserved fields must be zero, which ctypes guarantees.
class CUuuid(ctypes.Structure):
    # char bytes[16] in cuda.h; unsigned here, since ctypes cuts a c_char array at its first NUL.
    _fields_ = (("bytes", ctypes.c_ubyte * 16),)


class CUcheckpointLockArgs(ctypes.Structure):
    _fields_ = (
        ("timeoutMs", ctypes.c_uint),
        ("reserved0", ctypes.c_uint),
        ("reserved1", ctypes.c_uint64 * 7),
    )


class CUcheckpointCheckpointArgs(ctypes.Structure):
    _fields_ = (("reserved", ctypes.c_uint64 * 8),)


class CUcheckpointGpuPair(ctypes.Structure):
    _fields_ = (("oldUuid", CUuuid), ("newUuid", CUuuid))


class CUcheckpointRestoreArgs(ctypes.Structure):
    # char reserved[52 - sizeof(CUcheckpointGpuPair *)]: 44 bytes on a 64-bit ABI.
    _fields_ = (
        ("gpuPairs", ctypes.POINTER(CUcheckpointGpuPair)),
        ("gpuPairsCount", ctypes.c_uint),
        ("reserved", ctypes.c_char * (52 - ctypes.sizeof(ctypes.c_void_p))),
        ("reserved1", ctypes.c_uint64),
    )


class CUcheckpointUnlockArgs(ctypes.Structure):
    _fields_ = (("reserved", ctypes.c_uint64 * 8),)


def struct_layout() -> dict[str, int]:
    """The sizes and offsets that tests/device/layout_check.c prints from cuda.h, to compare."""
    return {
        "sizeof_CUuuid": ctypes.sizeof(CUuuid),
        "sizeof_CUcheckpointLockArgs": ctypes.sizeof(CUcheckpointLockArgs),
        "offsetof_CUcheckpointLockArgs_timeoutMs": CUcheckpointLockArgs.timeoutMs.offset,
        "offsetof_CUcheckpointLockArgs_reserved0": CUcheckpointLockArgs.reserved0.offset,
        "offsetof_CUcheckpointLockArgs_reserved1": CUcheckpointLockArgs.reserved1.offset,
        "sizeof_CUcheckpointCheckpointArgs": ctypes.sizeof(CUcheckpointCheckpointArgs),
        "sizeof_CUcheckpointGpuPair": ctypes.sizeof(CUcheckpointGpuPair),
        "offsetof_CUcheckpointGpuPair_newUuid": CUcheckpointGpuPair.newUuid.offset,
        "sizeof_CUcheckpointRestoreArgs": ctypes.sizeof(CUcheckpointRestoreArgs),
        "offsetof_CUcheckpointRestoreArgs_gpuPairs": CUcheckpointRestoreArgs.gpuPairs.offset,
        "offsetof_CUcheckpointRestoreArgs_gpuPairsCount": (
            CUcheckpointRestoreArgs.gpuPairsCount.offset
        ),
        "offsetof_CUcheckpointRestoreArgs_reserved1": CUcheckpointRestoreArgs.reserved1.offset,
        "sizeof_CUcheckpointUnlockArgs": ctypes.sizeof(CUcheckpointUnlockArgs),
        "sizeof_CUprocessState": ctypes.sizeof(ctypes.c_int),
        "CU_PROCESS_STATE_RUNNING": 0,
        "CU_PROCESS_STATE_LOCKED": 1,
        "CU_PROCESS_STATE_CHECKPOINTED": 2,
        "CU_PROCESS_STATE_FAILED": 3,
    }


# Generated from tests/device/kernels.cu (see there how); .version lowered to 7.0 as it uses
# nothing newer. pattern(i, seed) here and in Python (pattern() below) must agree.
PTX = r"""
.version 7.0
.target sm_75
.address_size 64

	// .globl	fill

.visible .entry fill(
	.param .u64 fill_param_0,
	.param .u64 fill_param_1,
	.param .u32 fill_param_2
)
{
	.reg .pred 	%p<3>;
	.reg .b32 	%r<16>;
	.reg .b64 	%rd<16>;


	ld.param.u64 	%rd7, [fill_param_0];
	ld.param.u64 	%rd8, [fill_param_1];
	ld.param.u32 	%r1, [fill_param_2];
	mov.u32 	%r2, %ctaid.x;
	mov.u32 	%r3, %ntid.x;
	cvt.u64.u32 	%rd1, %r3;
	mul.wide.u32 	%rd9, %r2, %r3;
	mov.u32 	%r4, %tid.x;
	cvt.u64.u32 	%rd10, %r4;
	add.s64 	%rd15, %rd9, %rd10;
	setp.ge.u64 	%p1, %rd15, %rd8;
	@%p1 bra 	$L__BB0_3;

	mov.u32 	%r5, %nctaid.x;
	cvt.u64.u32 	%rd11, %r5;
	mul.lo.s64 	%rd3, %rd11, %rd1;
	cvta.to.global.u64 	%rd4, %rd7;

$L__BB0_2:
	cvt.u32.u64 	%r6, %rd15;
	mul.lo.s32 	%r7, %r6, -1640531535;
	shr.u64 	%rd12, %rd15, 32;
	cvt.u32.u64 	%r8, %rd12;
	mad.lo.s32 	%r9, %r8, -2048144777, %r1;
	xor.b32  	%r10, %r9, %r7;
	shr.u32 	%r11, %r10, 16;
	xor.b32  	%r12, %r11, %r10;
	mul.lo.s32 	%r13, %r12, 2146121005;
	shr.u32 	%r14, %r13, 15;
	xor.b32  	%r15, %r14, %r13;
	shl.b64 	%rd13, %rd15, 2;
	add.s64 	%rd14, %rd4, %rd13;
	st.global.u32 	[%rd14], %r15;
	add.s64 	%rd15, %rd15, %rd3;
	setp.lt.u64 	%p2, %rd15, %rd8;
	@%p2 bra 	$L__BB0_2;

$L__BB0_3:
	ret;

}
	// .globl	add
.visible .entry add(
	.param .u64 add_param_0,
	.param .u64 add_param_1,
	.param .u32 add_param_2
)
{
	.reg .pred 	%p<3>;
	.reg .b32 	%r<8>;
	.reg .b64 	%rd<15>;


	ld.param.u64 	%rd7, [add_param_0];
	ld.param.u64 	%rd8, [add_param_1];
	ld.param.u32 	%r1, [add_param_2];
	mov.u32 	%r2, %ctaid.x;
	mov.u32 	%r3, %ntid.x;
	cvt.u64.u32 	%rd1, %r3;
	mul.wide.u32 	%rd9, %r2, %r3;
	mov.u32 	%r4, %tid.x;
	cvt.u64.u32 	%rd10, %r4;
	add.s64 	%rd14, %rd9, %rd10;
	setp.ge.u64 	%p1, %rd14, %rd8;
	@%p1 bra 	$L__BB1_3;

	mov.u32 	%r5, %nctaid.x;
	cvt.u64.u32 	%rd11, %r5;
	mul.lo.s64 	%rd3, %rd11, %rd1;
	cvta.to.global.u64 	%rd4, %rd7;

$L__BB1_2:
	shl.b64 	%rd12, %rd14, 2;
	add.s64 	%rd13, %rd4, %rd12;
	ld.global.u32 	%r6, [%rd13];
	add.s32 	%r7, %r6, %r1;
	st.global.u32 	[%rd13], %r7;
	add.s64 	%rd14, %rd14, %rd3;
	setp.lt.u64 	%p2, %rd14, %rd8;
	@%p2 bra 	$L__BB1_2;

$L__BB1_3:
	ret;

}
	// .globl	check
.visible .entry check(
	.param .u64 check_param_0,
	.param .u64 check_param_1,
	.param .u32 check_param_2,
	.param .u32 check_param_3,
	.param .u64 check_param_4
)
{
	.reg .pred 	%p<5>;
	.reg .b32 	%r<19>;
	.reg .b64 	%rd<27>;


	ld.param.u64 	%rd10, [check_param_0];
	ld.param.u64 	%rd11, [check_param_1];
	ld.param.u32 	%r1, [check_param_2];
	ld.param.u32 	%r2, [check_param_3];
	ld.param.u64 	%rd12, [check_param_4];
	mov.u32 	%r3, %ctaid.x;
	mov.u32 	%r4, %ntid.x;
	cvt.u64.u32 	%rd1, %r4;
	mul.wide.u32 	%rd14, %r3, %r4;
	mov.u32 	%r5, %tid.x;
	cvt.u64.u32 	%rd15, %r5;
	add.s64 	%rd24, %rd14, %rd15;
	setp.ge.u64 	%p1, %rd24, %rd11;
	mov.u64 	%rd26, 0;
	@%p1 bra 	$L__BB2_3;

	mov.u32 	%r6, %nctaid.x;
	cvt.u64.u32 	%rd17, %r6;
	mul.lo.s64 	%rd3, %rd17, %rd1;
	cvta.to.global.u64 	%rd4, %rd10;
	mov.u64 	%rd26, 0;

$L__BB2_2:
	cvt.u32.u64 	%r7, %rd24;
	mul.lo.s32 	%r8, %r7, -1640531535;
	shr.u64 	%rd18, %rd24, 32;
	cvt.u32.u64 	%r9, %rd18;
	mad.lo.s32 	%r10, %r9, -2048144777, %r1;
	xor.b32  	%r11, %r10, %r8;
	shr.u32 	%r12, %r11, 16;
	xor.b32  	%r13, %r12, %r11;
	mul.lo.s32 	%r14, %r13, 2146121005;
	shr.u32 	%r15, %r14, 15;
	xor.b32  	%r16, %r15, %r14;
	add.s32 	%r17, %r16, %r2;
	shl.b64 	%rd19, %rd24, 2;
	add.s64 	%rd20, %rd4, %rd19;
	ld.global.u32 	%r18, [%rd20];
	setp.ne.s32 	%p2, %r18, %r17;
	selp.u64 	%rd21, 1, 0, %p2;
	add.s64 	%rd26, %rd26, %rd21;
	add.s64 	%rd24, %rd24, %rd3;
	setp.lt.u64 	%p3, %rd24, %rd11;
	@%p3 bra 	$L__BB2_2;

$L__BB2_3:
	setp.eq.s64 	%p4, %rd26, 0;
	@%p4 bra 	$L__BB2_5;

	cvta.to.global.u64 	%rd22, %rd12;
	atom.global.add.u64 	%rd23, [%rd22], %rd26;

$L__BB2_5:
	ret;

}
"""

M32 = 0xFFFFFFFF


def pattern(i: int, seed: int) -> int:
    """The word fill() writes at index i (kernels.cu: pattern)."""
    x = ((i & M32) * 2654435761 & M32) ^ (((i >> 32) * 2246822519 + seed) & M32)
    x ^= x >> 16
    x = (x * 0x7FEB352D) & M32
    x ^= x >> 15
    return x


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class CudaError(Exception):
    def __init__(self, func: str, code: int, name: str) -> None:
        super().__init__(f"{func} failed: {name} ({code})")
        self.func, self.code, self.name = func, code, name


class Driver:
    """libcuda through ctypes: only the symbols this script calls, by their exported names.

    cuda.h maps some API names onto versioned symbols (cuMemAlloc -> cuMemAlloc_v2); those are
    bound here by the versioned name. The checkpoint functions are not versioned in cuda.h
    (13.0), so dlsym finds them by their plain names; cuGetProcAddress_v2 is asked too, as a
    cross-check that is recorded in the result.
    """

    SIGNATURES: ClassVar[dict[str, tuple[Any, ...]]] = {
        "cuInit": (ctypes.c_uint,),
        "cuDriverGetVersion": (ctypes.POINTER(ctypes.c_int),),
        "cuGetErrorName": (ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)),
        "cuGetErrorString": (ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)),
        "cuDeviceGetCount": (ctypes.POINTER(ctypes.c_int),),
        "cuDeviceGet": (ctypes.POINTER(ctypes.c_int), ctypes.c_int),
        "cuDeviceGetName": (ctypes.c_char_p, ctypes.c_int, ctypes.c_int),
        "cuDeviceGetUuid_v2": (ctypes.POINTER(CUuuid), ctypes.c_int),
        "cuDeviceTotalMem_v2": (ctypes.POINTER(ctypes.c_size_t), ctypes.c_int),
        "cuDeviceGetAttribute": (ctypes.POINTER(ctypes.c_int), ctypes.c_int, ctypes.c_int),
        "cuDevicePrimaryCtxRetain": (ctypes.POINTER(ctypes.c_void_p), ctypes.c_int),
        "cuDevicePrimaryCtxRelease_v2": (ctypes.c_int,),
        "cuCtxSetCurrent": (ctypes.c_void_p,),
        "cuCtxSynchronize": (),
        "cuMemGetInfo_v2": (ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t)),
        "cuMemAlloc_v2": (ctypes.POINTER(ctypes.c_uint64), ctypes.c_size_t),
        "cuMemFree_v2": (ctypes.c_uint64,),
        "cuMemsetD32_v2": (ctypes.c_uint64, ctypes.c_uint, ctypes.c_size_t),
        "cuMemcpyDtoH_v2": (ctypes.c_void_p, ctypes.c_uint64, ctypes.c_size_t),
        "cuModuleLoadDataEx": (
            ctypes.POINTER(ctypes.c_void_p),
            ctypes.c_char_p,
            ctypes.c_uint,
            ctypes.POINTER(ctypes.c_int),
            ctypes.POINTER(ctypes.c_void_p),
        ),
        "cuModuleGetFunction": (ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p, ctypes.c_char_p),
        "cuLaunchKernel": (
            ctypes.c_void_p,
            *(ctypes.c_uint,) * 7,
            ctypes.c_void_p,
            ctypes.POINTER(ctypes.c_void_p),
            ctypes.POINTER(ctypes.c_void_p),
        ),
        "cuGetProcAddress_v2": (
            ctypes.c_char_p,
            ctypes.POINTER(ctypes.c_void_p),
            ctypes.c_int,
            ctypes.c_uint64,
            ctypes.POINTER(ctypes.c_int),
        ),
        "cuCheckpointProcessGetRestoreThreadId": (ctypes.c_int, ctypes.POINTER(ctypes.c_int)),
        "cuCheckpointProcessGetState": (ctypes.c_int, ctypes.POINTER(ctypes.c_int)),
        "cuCheckpointProcessLock": (ctypes.c_int, ctypes.POINTER(CUcheckpointLockArgs)),
        "cuCheckpointProcessCheckpoint": (ctypes.c_int, ctypes.POINTER(CUcheckpointCheckpointArgs)),
        "cuCheckpointProcessRestore": (ctypes.c_int, ctypes.POINTER(CUcheckpointRestoreArgs)),
        "cuCheckpointProcessUnlock": (ctypes.c_int, ctypes.POINTER(CUcheckpointUnlockArgs)),
    }

    def __init__(self, lib: ctypes.CDLL, path: str) -> None:
        self.lib, self.path = lib, path
        self.funcs: dict[str, Any] = {}
        for name, argtypes in self.SIGNATURES.items():
            func = getattr(lib, name, None)
            if func is None:
                continue
            func.argtypes = argtypes
            func.restype = ctypes.c_int
            self.funcs[name] = func

    def has(self, name: str) -> bool:
        return name in self.funcs

    def error_name(self, code: int) -> str:
        if self.has("cuGetErrorName"):
            out = ctypes.c_char_p()
            if self.funcs["cuGetErrorName"](code, ctypes.byref(out)) == 0 and out.value:
                return out.value.decode()
        return ERROR_NAMES.get(code, f"CUresult {code}")

    def raw(self, name: str, *args: Any) -> int:
        if name not in self.funcs:
            raise CudaError(name, -1, "symbol not exported by this libcuda")
        return int(self.funcs[name](*args))

    def __call__(self, name: str, *args: Any) -> None:
        code = self.raw(name, *args)
        if code != CUDA_SUCCESS:
            raise CudaError(name, code, self.error_name(code))

    def proc_address(self, symbol: str, cuda_version: int) -> str:
        """cuGetProcAddress_v2's answer for a symbol: found, not found or version too low."""
        if not self.has("cuGetProcAddress_v2"):
            return "cuGetProcAddress_v2 not exported"
        fn, status = ctypes.c_void_p(), ctypes.c_int(-1)
        code = self.raw(
            "cuGetProcAddress_v2",
            symbol.encode(),
            ctypes.byref(fn),
            cuda_version,
            0,
            ctypes.byref(status),
        )
        statuses = {0: "found", 1: "symbol not found", 2: "version not sufficient"}
        if code != CUDA_SUCCESS:
            return f"{self.error_name(code)} ({statuses.get(status.value, status.value)})"
        return statuses.get(status.value, f"status {status.value}") if fn.value else "null"


class NoLibcuda(Exception):
    pass


def loaded_path(fragment: str) -> str | None:
    """The file the dynamic loader mapped for a library (from /proc/self/maps)."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                parts = line.split()
                if len(parts) >= 6 and fragment in os.path.basename(parts[-1]):
                    return parts[-1]
    except OSError:
        pass
    return None


def load_libcuda(explicit: str | None) -> Driver:
    """libcuda.so.1 as the loader finds it, else from the usual driver folders; never a stub."""
    candidates = [explicit] if explicit else ["libcuda.so.1"]
    if not explicit:
        candidates += [os.path.join(d, "libcuda.so.1") for d in LIBCUDA_DIRS]
    tried = []
    for candidate in candidates:
        if "/stubs/" in candidate:
            continue
        try:
            lib = ctypes.CDLL(candidate)
        except OSError as e:
            tried.append(str(e))
            continue
        path = loaded_path("libcuda.so") or candidate
        if "/stubs/" in path:
            tried.append(f"{candidate}: resolved to the toolkit's stub {path}")
            continue
        return Driver(lib, path)
    raise NoLibcuda("; ".join(tried) or "no candidate")


def version_str(v: int) -> str:
    return f"{v // 1000}.{(v % 1000) // 10}"


def driver_release() -> str | None:
    """The display driver's release (e.g. 580.159.04), from the kernel module or nvidia-smi."""
    try:
        with open("/proc/driver/nvidia/version") as f:
            for word in f.readline().split():
                if word.count(".") >= 1 and word.replace(".", "").isdigit():
                    return word
    except OSError:
        pass
    smi = nvidia_smi("--query-gpu=driver_version", "--format=csv,noheader")
    return smi.splitlines()[0].strip() if smi else None


def nvidia_smi(*args: str) -> str | None:
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", *args], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def gpu_memory_used_mib(gpu_id: str) -> int | None:
    out = nvidia_smi(f"--id={gpu_id}", "--query-gpu=memory.used", "--format=csv,noheader,nounits")
    try:
        return int(out.split()[0]) if out else None
    except (ValueError, IndexError):
        return None


def proc_status_kib(pid: int, field: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def meminfo_kib(field: str) -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def uuid_str(raw: bytes) -> str:
    h = raw.hex()
    return f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


SIZE_UNITS = {"G": GIB, "M": MIB, "K": 1024, "B": 1}


def parse_size(text: str) -> int:
    """A number with an optional unit: G (the default), M, K (binary) or B (bytes)."""
    t = text.strip().upper().removesuffix("IB")
    scale = GIB
    if t and t[-1] in SIZE_UNITS:
        t, scale = t[:-1], SIZE_UNITS[t[-1]]
    size = int(float(t) * scale)
    if size <= 0:
        raise ValueError("a size must be positive")
    if size % 4:
        raise ValueError("a size must be a whole number of 4-byte words")
    return size


def fmt_bytes(n: float) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / MIB:.1f} MiB"


# ---------------------------------------------------------------------------------------------
# The child: owns the device memory, computes, waits, verifies.


class Workload:
    """Device buffers of one size in chunks of plain cuMemAlloc, with the three kernels."""

    THREADS = 256
    SPOT_WORDS = 1024  # words at each chunk's start and end also checked on the host

    def __init__(self, cu: Driver, device: int, size: int, chunk: int) -> None:
        self.cu, self.size, self.chunk = cu, size, chunk
        self.dev = ctypes.c_int()
        cu("cuDeviceGet", ctypes.byref(self.dev), device)
        self.ctx = ctypes.c_void_p()
        cu("cuDevicePrimaryCtxRetain", ctypes.byref(self.ctx), self.dev)
        cu("cuCtxSetCurrent", self.ctx)
        sms = ctypes.c_int()
        cu(
            "cuDeviceGetAttribute",
            ctypes.byref(sms),
            CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
            self.dev,
        )
        self.blocks = max(1, sms.value) * 8
        self.buffers: list[tuple[int, int]] = []  # (device pointer, words)
        self.counter = 0
        self.funcs: dict[str, ctypes.c_void_p] = {}

    def mem_info(self) -> tuple[int, int]:
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        self.cu("cuMemGetInfo_v2", ctypes.byref(free), ctypes.byref(total))
        return free.value, total.value

    def load_module(self) -> None:
        log_size = 16384
        error_log = ctypes.create_string_buffer(log_size)
        options = (ctypes.c_int * 2)(CU_JIT_ERROR_LOG_BUFFER, CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES)
        values = (ctypes.c_void_p * 2)(ctypes.addressof(error_log), log_size)
        module = ctypes.c_void_p()
        code = self.cu.raw(
            "cuModuleLoadDataEx", ctypes.byref(module), PTX.encode(), 2, options, values
        )
        if code != CUDA_SUCCESS:
            detail = error_log.value.decode(errors="replace").strip()
            raise CudaError("cuModuleLoadDataEx", code, f"{self.cu.error_name(code)}: {detail}")
        for name in ("fill", "add", "check"):
            func = ctypes.c_void_p()
            self.cu("cuModuleGetFunction", ctypes.byref(func), module, name.encode())
            self.funcs[name] = func

    def allocate(self) -> None:
        """Raises CudaError(CUDA_ERROR_OUT_OF_MEMORY) after freeing what it got, if short."""
        counter = ctypes.c_uint64()
        self.cu("cuMemAlloc_v2", ctypes.byref(counter), 8)
        self.counter = counter.value
        left = self.size
        try:
            while left:
                n = min(left, self.chunk)
                ptr = ctypes.c_uint64()
                self.cu("cuMemAlloc_v2", ctypes.byref(ptr), n)
                self.buffers.append((ptr.value, n // 4))
                left -= n
        except CudaError:
            self.free()
            raise

    def free(self) -> None:
        for ptr, _ in self.buffers:
            self.cu.raw("cuMemFree_v2", ptr)
        self.buffers = []
        if self.counter:
            self.cu.raw("cuMemFree_v2", self.counter)
            self.counter = 0

    def launch(self, name: str, *args: ctypes._SimpleCData) -> None:
        params = (ctypes.c_void_p * len(args))(*(ctypes.addressof(a) for a in args))
        blocks = self.blocks
        self.cu(
            "cuLaunchKernel",
            self.funcs[name],
            blocks,
            1,
            1,
            self.THREADS,
            1,
            1,
            0,
            None,
            params,
            None,
        )

    @staticmethod
    def seed(index: int) -> int:
        return (0x5EED0000 + index * 7919) & M32

    def fill(self) -> None:
        for i, (ptr, words) in enumerate(self.buffers):
            self.launch(
                "fill", ctypes.c_uint64(ptr), ctypes.c_uint64(words), ctypes.c_uint32(self.seed(i))
            )
        self.cu("cuCtxSynchronize")

    def add(self, k: int) -> None:
        for ptr, words in self.buffers:
            self.launch("add", ctypes.c_uint64(ptr), ctypes.c_uint64(words), ctypes.c_uint32(k))
        self.cu("cuCtxSynchronize")

    def mismatches(self, offset: int) -> int:
        """Words that differ from pattern + offset, counted on the GPU over every chunk."""
        self.cu("cuMemsetD32_v2", self.counter, 0, 2)
        for i, (ptr, words) in enumerate(self.buffers):
            self.launch(
                "check",
                ctypes.c_uint64(ptr),
                ctypes.c_uint64(words),
                ctypes.c_uint32(self.seed(i)),
                ctypes.c_uint32(offset & M32),
                ctypes.c_uint64(self.counter),
            )
        self.cu("cuCtxSynchronize")
        out = ctypes.c_uint64()
        self.cu("cuMemcpyDtoH_v2", ctypes.byref(out), self.counter, 8)
        return out.value

    def spot_mismatches(self, offset: int) -> int:
        """The first and last words of every chunk copied back and checked here, in Python: a
        check that does not rely on the check kernel."""
        bad = 0
        for i, (ptr, words) in enumerate(self.buffers):
            n = min(self.SPOT_WORDS, words)
            for start in sorted({0, words - n}):
                host = (ctypes.c_uint32 * n)()
                self.cu("cuMemcpyDtoH_v2", host, ptr + 4 * start, 4 * n)
                seed = self.seed(i)
                bad += sum(
                    1 for j in range(n) if host[j] != (pattern(start + j, seed) + offset) & M32
                )
        return bad

    def words(self) -> int:
        return sum(w for _, w in self.buffers)

    def release(self) -> None:
        self.free()
        self.cu.raw("cuDevicePrimaryCtxRelease_v2", self.dev)


@contextmanager
def timed(results: dict[str, float], key: str) -> Iterator[None]:
    t0 = time.perf_counter()
    yield
    results[key] = round(time.perf_counter() - t0, 4)


def run_child(args: argparse.Namespace) -> int:
    events = os.fdopen(args.event_fd, "w", buffering=1)
    commands = os.fdopen(args.cmd_fd, "r")

    def emit(event: str, **data: Any) -> None:
        events.write(json.dumps({"event": event, **data}) + "\n")

    try:
        cu = load_libcuda(args.libcuda)
        t: dict[str, float] = {}
        with timed(t, "cuInit_s"):
            cu("cuInit", 0)
        work = Workload(cu, args.device, args.size_bytes, args.chunk_bytes)
        free_before, total = work.mem_info()
        if free_before < args.size_bytes + args.reserve_bytes:
            emit(
                "skip",
                reason=f"the GPU has {fmt_bytes(free_before)} free, less than the "
                f"{fmt_bytes(args.size_bytes + args.reserve_bytes)} needed",
                free_bytes=free_before,
                total_bytes=total,
            )
            work.release()
            return 0
        with timed(t, "module_load_s"):
            work.load_module()
        try:
            with timed(t, "alloc_s"):
                work.allocate()
        except CudaError as e:
            if e.code != CUDA_ERROR_OUT_OF_MEMORY:
                raise
            emit("skip", reason=f"cuMemAlloc ran out of device memory: {e}", free_bytes=free_before)
            work.release()
            return 0
        with timed(t, "fill_s"):
            work.fill()
        before = {"after_fill": work.mismatches(0)}
        # A negative control: the check kernel must see every word differ from pattern + 1.
        before["control_offset_1"] = work.mismatches(1)
        with timed(t, "add_s"):
            work.add(1)
        with timed(t, "check_s"):
            before["after_add"] = work.mismatches(1)
        before["spot_after_add"] = work.spot_mismatches(1)
        free_after, _ = work.mem_info()
        emit(
            "ready",
            pid=os.getpid(),
            words=work.words(),
            chunks=len(work.buffers),
            free_before_bytes=free_before,
            free_after_alloc_bytes=free_after,
            timings=t,
            checks=before,
        )
        for line in commands:
            command = line.strip()
            if command == "verify":
                v: dict[str, float] = {}
                after: dict[str, int] = {}
                with timed(v, "first_check_s"):
                    after["after_restore"] = work.mismatches(1)
                after["spot_after_restore"] = work.spot_mismatches(1)
                with timed(v, "add_s"):
                    work.add(1)
                with timed(v, "check_s"):
                    after["after_recompute"] = work.mismatches(2)
                after["spot_after_recompute"] = work.spot_mismatches(2)
                after["control_offset_1"] = work.mismatches(1)
                emit("verified", timings=v, checks=after)
            elif command == "exit":
                break
        work.release()
        return 0
    except (CudaError, NoLibcuda) as e:
        emit("error", error=str(e), code=getattr(e, "code", None))
        return 1


# ---------------------------------------------------------------------------------------------
# The parent: drives the checkpoint API on the child's pid.


class ChildGone(Exception):
    pass


class Child:
    """The child process and its two pipes: commands in, JSON events out.

    For a CRIU run (criu_log set) the child starts its own session with its output in a file,
    and the parent keeps the child's ends of the pipes, to hand them to `criu restore`."""

    def __init__(
        self, args: argparse.Namespace, cu: Driver, size: int, criu_log: str | None = None
    ) -> None:
        self.cmd_r, self.cmd_w = os.pipe()
        self.event_r, self.event_w = os.pipe()
        argv = [
            sys.executable,
            os.path.abspath(__file__),
            "--child",
            f"--libcuda={cu.path}",
            f"--device={args.device}",
            f"--size-bytes={size}",
            f"--chunk-bytes={args.chunk_bytes}B",
            f"--reserve-bytes={args.reserve_bytes}B",
            f"--cmd-fd={self.cmd_r}",
            f"--event-fd={self.event_w}",
        ]
        fds = (self.cmd_r, self.event_w)
        if criu_log:
            with open(criu_log, "ab") as out:
                self.proc = subprocess.Popen(
                    argv,
                    pass_fds=fds,
                    start_new_session=True,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=out,
                )
        else:
            self.proc = subprocess.Popen(argv, pass_fds=fds)
            self.release_child_ends()
        self.pid = self.proc.pid
        self.buf = b""
        self.restored = False  # restored by CRIU: no longer self.proc, but our child still

    def release_child_ends(self) -> None:
        for fd in (self.cmd_r, self.event_w):
            with suppress(OSError):
                os.close(fd)
        self.cmd_r = self.event_w = -1

    def send(self, command: str) -> None:
        os.write(self.cmd_w, command.encode() + b"\n")

    def event(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no word from the child in {timeout:.0f} s")
            ready, _, _ = select.select([self.event_r], [], [], left)
            if ready:
                data = os.read(self.event_r, 65536)
                if not data:
                    raise ChildGone("the child closed its pipe: it ended")
                self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def wait(self, timeout: float) -> int | None:
        if not self.restored:
            try:
                return self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                return None
        # A restored child is ours through PR_SET_CHILD_SUBREAPER: poll waitpid.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                return None
            if pid:
                return os.waitstatus_to_exitcode(status)
            time.sleep(0.05)
        return None

    def close(self) -> int | None:
        with suppress(OSError):
            self.send("exit")
        code = self.wait(60)
        if code is None:
            with suppress(OSError):
                os.kill(self.pid, signal.SIGKILL)
            code = self.wait(10)
        self.release_child_ends()
        os.close(self.cmd_w)
        os.close(self.event_r)
        return code


class Checkpointer:
    """The checkpoint API on one pid, each call timed and its state checked."""

    def __init__(self, cu: Driver, pid: int, lock_timeout_ms: int) -> None:
        self.cu, self.pid, self.lock_timeout_ms = cu, pid, lock_timeout_ms

    def state(self) -> str:
        s = ctypes.c_int(-1)
        self.cu("cuCheckpointProcessGetState", self.pid, ctypes.byref(s))
        return PROCESS_STATES.get(s.value, f"unknown ({s.value})")

    def restore_thread_id(self) -> int:
        tid = ctypes.c_int(0)
        self.cu("cuCheckpointProcessGetRestoreThreadId", self.pid, ctypes.byref(tid))
        return tid.value

    def lock(self) -> None:
        args = CUcheckpointLockArgs(timeoutMs=self.lock_timeout_ms)
        self.cu("cuCheckpointProcessLock", self.pid, ctypes.byref(args))

    def checkpoint(self) -> None:
        args = CUcheckpointCheckpointArgs()
        self.cu("cuCheckpointProcessCheckpoint", self.pid, ctypes.byref(args))

    def restore(self) -> None:
        args = CUcheckpointRestoreArgs()  # no GPU remapping: back onto the same GPU
        self.cu("cuCheckpointProcessRestore", self.pid, ctypes.byref(args))

    def unlock(self) -> None:
        args = CUcheckpointUnlockArgs()
        self.cu("cuCheckpointProcessUnlock", self.pid, ctypes.byref(args))

    def recover(self) -> str:
        """After a failure: bring the child back to running if the state allows, for a clean end."""
        try:
            if self.state() == CHECKPOINTED:
                self.restore()
            if self.state() == LOCKED:
                self.unlock()
            return self.state()
        except CudaError as e:
            return f"recovery failed: {e}"


class Mismatch(Exception):
    pass


class Interrupted(Exception):
    """SIGTERM (run.sh's timeout): end the current size cleanly and write what was measured."""


def on_sigterm(signum: int, frame: Any) -> None:
    raise Interrupted("interrupted by SIGTERM (out of time?)")


def expect(what: str, got: Any, want: Any) -> None:
    if got != want:
        raise Mismatch(f"{what}: got {got}, expected {want}")


def check_problems(checks: dict[str, int], words: int) -> list[str]:
    """What is wrong in a child's mismatch counts: every count must be 0, except the negative
    controls, which must count every word (a check kernel that did not run would count none)."""
    problems = []
    for key, value in checks.items():
        want = words if key.startswith("control") else 0
        if value != want:
            problems.append(f"{key}: {value} mismatching words, expected {want}")
    return problems


class Cycle:
    """One size's measurements, filled in by the API cycle or the CRIU cycle."""

    def __init__(self, child: Child, ck: Checkpointer, smi_id: str | None) -> None:
        self.child, self.ck, self.smi_id = child, ck, smi_id
        self.states: dict[str, str] = {}
        self.phases: dict[str, float] = {}
        self.memory: dict[str, Any] = {}

    def note_memory(self, when: str) -> None:
        """Where the memory is: on the GPU (nvidia-smi) and in the child's host memory."""
        if self.smi_id is not None:
            self.memory[f"gpu_used_mib_{when}"] = gpu_memory_used_mib(self.smi_id)
        self.memory[f"child_rss_kib_{when}"] = proc_status_kib(self.child.pid, "VmRSS")

    def timed(self, name: str, step: Callable[[], None]) -> None:
        t0 = time.perf_counter()
        step()
        self.phases[name] = round(time.perf_counter() - t0, 4)

    def state_after(self, name: str, want: str) -> None:
        self.states[f"after_{name}"] = got = self.ck.state()
        log(f"{name}: {self.phases.get(name, 0):.3f} s, state {got}")
        expect(f"state after {name}", got, want)

    def api(self) -> dict[str, float]:
        """lock, checkpoint, restore, unlock through the driver API, states checked between."""
        for name, step, want in (
            ("lock", self.ck.lock, LOCKED),
            ("checkpoint", self.ck.checkpoint, CHECKPOINTED),
            ("restore", self.ck.restore, LOCKED),
            ("unlock", self.ck.unlock, RUNNING),
        ):
            self.timed(name, step)
            self.state_after(name, want)
            if name == "checkpoint":
                self.note_memory("checkpointed")
                apps = nvidia_smi("--query-compute-apps=pid,used_memory", "--format=csv,noheader")
                if apps is not None:
                    self.memory["compute_apps_checkpointed"] = apps.strip()
        return {"checkpoint": self.phases["checkpoint"], "restore": self.phases["restore"]}

    def criu(self, args: argparse.Namespace, api: bool) -> dict[str, float]:
        """`criu dump` of the child (its CUDA plugin locks and checkpoints) and `criu restore`
        (the plugin restores and unlocks), the pipes to the parent handed back by inode."""
        child = self.child
        images = tempfile.mkdtemp(prefix="cuda-checkpoint-criu-", dir=args.criu_images)
        self.memory["criu_images_dir"] = images
        base = shlex.split(args.criu)
        common = ["--images-dir", images, "-v4"]
        if args.criu_libdir:
            common += ["--libdir", args.criu_libdir]
        cmd_ino, event_ino = os.fstat(child.cmd_r).st_ino, os.fstat(child.event_w).st_ino

        def criu(action: str, *extra: str) -> None:
            argv = [*base, action, "--log-file", f"{action}.log", *common, *extra]
            done = subprocess.run(
                argv,
                pass_fds=(child.cmd_r, child.event_w),
                capture_output=True,
                text=True,
                timeout=args.criu_timeout_s,
                check=False,
            )
            if done.returncode != 0:
                raise Mismatch(
                    f"criu {action} exited {done.returncode}: {done.stderr.strip()[-500:]} "
                    f"{tail(os.path.join(images, action + '.log'))}"
                )

        try:
            self.timed("criu_dump", lambda: criu("dump", "--tree", str(child.pid)))
            gone = child.wait(30)  # CRIU ends the dumped tree
            self.states["after_dump"] = "gone" if gone is not None else "still running"
            expect("the child after criu dump", self.states["after_dump"], "gone")
            self.memory["criu_images_bytes"] = du(images)
            log(f"criu dump: {self.phases['criu_dump']:.3f} s, {fmt_bytes(du(images))} of images")
            self.timed(
                "criu_restore",
                lambda: criu(
                    "restore",
                    "--restore-detached",
                    "--inherit-fd",
                    f"fd[{child.cmd_r}]:pipe:[{cmd_ino}]",
                    "--inherit-fd",
                    f"fd[{child.event_w}]:pipe:[{event_ino}]",
                ),
            )
            child.restored = True
            child.release_child_ends()  # so that the child's end is seen as EOF
            if api:
                self.state_after("criu_restore", RUNNING)
            else:
                alive = os.path.exists(f"/proc/{child.pid}")
                self.states["after_criu_restore"] = "alive" if alive else "gone"
                log(
                    f"criu restore: {self.phases['criu_restore']:.3f} s, child {'alive' if alive else 'GONE'}"
                )
                expect("the child after criu restore", alive, True)
        finally:
            if not args.keep_criu_images:
                shutil.rmtree(images, ignore_errors=True)
        return {"checkpoint": self.phases["criu_dump"], "restore": self.phases["criu_restore"]}


def tail(path: str, lines: int = 5) -> str:
    try:
        with open(path, errors="replace") as f:
            return " | ".join(line.strip() for line in f.readlines()[-lines:])
    except OSError:
        return ""


def du(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def run_size(
    args: argparse.Namespace, cu: Driver, size: int, smi_id: str | None, api: bool
) -> dict[str, Any]:
    """One size: the child fills and checks, the checkpoint and restore (API or CRIU), the child
    verifies and computes again."""
    gib = size / GIB
    result: dict[str, Any] = {"size_bytes": size, "size_gib": round(gib, 3), "status": "failed"}
    result["mode"] = "criu" if args.criu else "driver_api"
    label = fmt_bytes(size)
    log(f"--- {label}: starting the child")
    child_log = os.path.join(args.criu_images, f"child-{size}.log") if args.criu else None
    child = Child(args, cu, size, criu_log=child_log)
    ck = Checkpointer(cu, child.pid, args.lock_timeout_ms)
    cycle = Cycle(child, ck, smi_id)
    result.update(pid=child.pid, states=cycle.states, phases_s=cycle.phases, memory=cycle.memory)
    try:
        ready = child.event(timeout=120 + 10 * gib)
        if ready["event"] == "skip":
            result.update(status="skipped", reason=ready["reason"])
            log(f"{label} skipped: {ready['reason']}")
            return result
        if ready["event"] != "ready":
            raise Mismatch(f"the child failed before the checkpoint: {ready.get('error')}")
        result["child_setup"] = ready
        words = ready["words"]
        problems = check_problems(ready["checks"], words)
        if problems:
            raise Mismatch("before the checkpoint: " + "; ".join(problems))
        log(f"child {child.pid} ready: {fmt_bytes(words * 4)} filled and checked")

        if api:
            cycle.states["before"] = ck.state()
            expect("state before the checkpoint", cycle.states["before"], RUNNING)
            try:  # informative only: what CRIU's plugin watches
                result["restore_thread_id"] = ck.restore_thread_id()
            except CudaError as e:
                result["restore_thread_id"] = str(e)
        cycle.note_memory("before")
        times = cycle.criu(args, api) if args.criu else cycle.api()
        cycle.note_memory("restored")
        result["per_gib_s"] = {
            "checkpoint": round(times["checkpoint"] / gib, 4),
            "restore": round(times["restore"] / gib, 4),
            "all_phases": round(sum(cycle.phases.values()) / gib, 4),
        }

        child.send("verify")
        verified = child.event(timeout=120 + 10 * gib)
        if verified["event"] != "verified":
            raise Mismatch(f"the child failed after the restore: {verified.get('error')}")
        result["child_verify"] = verified
        problems = check_problems(verified["checks"], words)
        if problems:
            raise Mismatch("after the restore: " + "; ".join(problems))
        result["status"] = "ok"
        log(
            f"{label} ok: checkpoint {result['per_gib_s']['checkpoint']:.3f} s/GiB, "
            f"restore {result['per_gib_s']['restore']:.3f} s/GiB"
        )
    except CudaError as e:
        result["error"] = str(e)
        if e.code == CUDA_ERROR_NOT_SUPPORTED and e.func.startswith("cuCheckpoint"):
            result["status"] = "unsupported"
        log(f"{label}: {e}")
        result["recovered_state"] = ck.recover() if api else None
    except (Mismatch, ChildGone, TimeoutError, subprocess.TimeoutExpired, Interrupted) as e:
        if isinstance(e, Interrupted):
            result["status"] = "interrupted"
        result["error"] = str(e)
        log(f"{label} FAILED: {e}")
        result["recovered_state"] = ck.recover() if api else None
    finally:
        result["child_exit"] = child.close()
        if result["status"] == "ok" and result["child_exit"] != 0:
            result.update(status="failed", error=f"the child exited with {result['child_exit']}")
    return result


def host_facts() -> dict[str, Any]:
    facts: dict[str, Any] = {
        "kernel": platform.release(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "mem_total_kib": meminfo_kib("MemTotal"),
        "mem_available_kib": meminfo_kib("MemAvailable"),
    }
    try:
        with open("/proc/version") as f:
            facts["proc_version"] = f.read().strip()
    except OSError:
        pass
    return facts


class Report:
    def __init__(self, path: str | None) -> None:
        self.path = path
        self.data: dict[str, Any] = {
            "script": "tests/device/cuda_checkpoint.py",
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "host": host_facts(),
            "runs": [],
        }

    def write(self) -> None:
        if self.path:
            tmp = self.path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(self.data, f, indent=2)
            os.replace(tmp, self.path)

    def finish(self, code: int, summary: str) -> int:
        self.data.update(exit_code=code, ok=code == EXIT_OK, summary=summary)
        self.write()
        if not self.path:
            print(json.dumps(self.data, indent=2))
        else:
            log(f"result written to {self.path}")
        log(summary)
        return code


def run_parent(args: argparse.Namespace) -> int:
    out = os.environ.get("OUT")
    report = Report(args.json or (os.path.join(out, "cuda_checkpoint.json") if out else None))
    data = report.data
    try:
        cu = load_libcuda(args.libcuda)
    except NoLibcuda as e:
        data["libcuda"] = None
        return report.finish(
            EXIT_NO_CUDA,
            f"no libcuda.so.1 could be loaded ({e}): this needs a machine with an NVIDIA driver",
        )
    data["libcuda"] = cu.path
    log(f"libcuda: {cu.path}")
    version = ctypes.c_int(0)
    if cu.has("cuDriverGetVersion"):
        cu.raw("cuDriverGetVersion", ctypes.byref(version))
    data["driver_api_version"] = version.value
    data["driver_api"] = version_str(version.value)
    data["driver_release"] = driver_release()
    code = cu.raw("cuInit", 0)
    if code != CUDA_SUCCESS:
        hint = (
            " (the CUDA toolkit's stub library, not a driver)"
            if code == CUDA_ERROR_STUB_LIBRARY
            else ""
        )
        return report.finish(
            EXIT_NO_CUDA, f"cuInit failed: {cu.error_name(code)} ({code}){hint}: no usable GPU"
        )
    count = ctypes.c_int(0)
    cu("cuDeviceGetCount", ctypes.byref(count))
    if args.device >= count.value:
        return report.finish(EXIT_NO_CUDA, f"GPU {args.device} asked for, {count.value} present")
    dev = ctypes.c_int()
    cu("cuDeviceGet", ctypes.byref(dev), args.device)
    name = ctypes.create_string_buffer(256)
    cu("cuDeviceGetName", name, 256, dev)
    uuid = CUuuid()
    cu("cuDeviceGetUuid_v2", ctypes.byref(uuid), dev)
    total = ctypes.c_size_t()
    cu("cuDeviceTotalMem_v2", ctypes.byref(total), dev)
    gpu = {
        "index": args.device,
        "count": count.value,
        "name": name.value.decode(),
        "uuid": uuid_str(bytes(uuid.bytes)),
        "total_bytes": total.value,
    }
    data["gpu"] = gpu
    log(
        f"GPU {args.device}: {gpu['name']} {gpu['uuid']}, {fmt_bytes(total.value)}; driver "
        f"{data['driver_release'] or '?'}, CUDA driver API {data['driver_api']}"
    )

    missing = [s for s in CHECKPOINT_SYMBOLS if not cu.has(s)]
    data["checkpoint_api"] = {
        "missing_symbols": missing,
        "proc_address": {
            s: cu.proc_address(s, max(version.value, MIN_CHECKPOINT_DRIVER_API))
            for s in CHECKPOINT_SYMBOLS
        },
    }
    api = not missing and version.value >= MIN_CHECKPOINT_DRIVER_API
    no_api = (
        f"this driver (CUDA driver API {data['driver_api']}, release "
        f"{data['driver_release'] or '?'}) has no CUDA checkpoint API: it needs driver r570 "
        f"or newer (CUDA 12.8 driver API); missing: {', '.join(missing) or 'none'}"
    )
    if not api and not args.criu:
        return report.finish(EXIT_NO_CHECKPOINT_API, no_api)
    if args.criu:
        # CRIU 4.2's CUDA plugin drives NVIDIA's cuda-checkpoint tool, not the API: go on without
        # the state checks. A child restored with --restore-detached is re-parented to us.
        data["criu"] = {"command": args.criu, "libdir": args.criu_libdir}
        if not api:
            log(f"{no_api}: the CRIU run goes on without the state checks")
        PR_SET_CHILD_SUBREAPER = 36
        if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            return report.finish(EXIT_FAILED, "prctl(PR_SET_CHILD_SUBREAPER) failed")

    # nvidia-smi is asked by UUID: its indices need not follow CUDA's ordinals.
    smi_id = gpu["uuid"] if shutil.which("nvidia-smi") and not args.no_nvidia_smi else None
    deadline = time.monotonic() + args.budget_s
    try:
        for size in sorted(args.sizes):
            needed = 15 + args.seconds_per_gib * size / GIB
            left = deadline - time.monotonic()
            skip = None
            if needed > left:
                skip = f"about {needed:.0f} s needed, {left:.0f} s of the budget left"
            elif size > total.value:
                skip = f"larger than the GPU's {fmt_bytes(total.value)}"
            if skip:
                log(f"{fmt_bytes(size)} skipped: {skip}")
                run = {"size_bytes": size, "size_gib": round(size / GIB, 3)}
                run.update(status="skipped", reason=skip)
            else:
                # The checkpoint stages GPU memory in host RAM: note how much the host had.
                available = meminfo_kib("MemAvailable")
                run = run_size(args, cu, size, smi_id, api)
                run["host_mem_available_kib_before"] = available
            data["runs"].append(run)
            report.write()
            if run["status"] in ("unsupported", "interrupted"):
                break
    except Interrupted as e:
        return report.finish(EXIT_FAILED, f"{e}; the sizes done are in the result")

    statuses = [r["status"] for r in data["runs"]]
    ran = [r for r in data["runs"] if r["status"] != "skipped"]
    if "unsupported" in statuses:
        err = next(r["error"] for r in data["runs"] if r["status"] == "unsupported")
        return report.finish(
            EXIT_NO_CHECKPOINT_API,
            f"the driver refused the checkpoint API on this machine: {err} "
            f"(a sandboxed runtime such as gVisor, MIG or MPS can cause this)",
        )
    if not ran:
        return report.finish(EXIT_NOTHING_RAN, "every size was skipped: nothing was checkpointed")
    failed = [r for r in ran if r["status"] != "ok"]
    table = ", ".join(
        f"{fmt_bytes(r['size_bytes'])}: {r['status']}"
        + (
            f" (checkpoint {r['per_gib_s']['checkpoint']:.2f} s/GiB, restore "
            f"{r['per_gib_s']['restore']:.2f} s/GiB)"
            if r["status"] == "ok"
            else f" ({r.get('error') or r.get('reason')})"
        )
        for r in data["runs"]
    )
    if failed:
        return report.finish(EXIT_FAILED, f"FAILED on {gpu['name']}: {table}")
    return report.finish(
        EXIT_OK, f"passed on {gpu['name']}, driver {data['driver_release'] or '?'}: {table}"
    )


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def parse_sizes(text: str) -> list[int]:
    try:
        return [parse_size(s) for s in text.split(",") if s.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r}: {e}") from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = Parser(
        description="Checkpoint and restore a CUDA process through the driver API "
        "(cuCheckpointProcess*), verifying its device memory. Needs an NVIDIA GPU.",
    )
    p.add_argument(
        "--sizes",
        type=parse_sizes,
        default=parse_sizes("1,8,32"),
        help="device memory per run, comma-separated; a plain number or G is GiB, M is MiB "
        "(default 1,8,32)",
    )
    p.add_argument("--device", type=int, default=0, help="CUDA device ordinal (default 0)")
    p.add_argument("--libcuda", help="path of libcuda.so.1 (default: the loader's search)")
    p.add_argument("--json", help="result file (default $OUT/cuda_checkpoint.json, else stdout)")
    p.add_argument(
        "--budget-s",
        type=float,
        default=420,
        help="skip sizes that would not finish within this many seconds (default 420)",
    )
    p.add_argument(
        "--seconds-per-gib",
        type=float,
        default=6.0,
        help="the estimate used for that: seconds per GiB of a whole cycle (default 6)",
    )
    p.add_argument(
        "--lock-timeout-ms", type=int, default=30000, help="cuCheckpointProcessLock's timeoutMs"
    )
    p.add_argument(
        "--chunk-bytes",
        type=parse_size,
        default=GIB,
        help="size of each cuMemAlloc (default 1G)",
    )
    p.add_argument(
        "--reserve-bytes",
        type=parse_size,
        default=512 * MIB,
        help="device memory left free besides the buffers (default 512M)",
    )
    p.add_argument("--no-nvidia-smi", action="store_true", help="do not ask nvidia-smi")
    crit = p.add_argument_group(
        "CRIU (step 2: the whole process dumped and restored by CRIU and its CUDA plugin)"
    )
    crit.add_argument(
        "--criu",
        help="checkpoint with this criu command (split like a shell would) instead of the API",
    )
    crit.add_argument("--criu-libdir", help="CRIU's plugin directory (holding cuda_plugin.so)")
    crit.add_argument(
        "--criu-images",
        default=tempfile.gettempdir(),
        help="where image directories and the child's log go (default: the temp dir)",
    )
    crit.add_argument(
        "--criu-timeout-s", type=float, default=300, help="limit for each criu command"
    )
    crit.add_argument(
        "--keep-criu-images", action="store_true", help="keep the images after the run"
    )
    p.add_argument("--layout", action="store_true", help="print the ctypes struct layout as JSON")
    p.add_argument("--print-ptx", action="store_true", help="print the embedded PTX")
    child = p.add_argument_group("internal (the child process)")
    child.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    child.add_argument("--size-bytes", type=int, help=argparse.SUPPRESS)
    child.add_argument("--cmd-fd", type=int, help=argparse.SUPPRESS)
    child.add_argument("--event-fd", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child and None in (args.size_bytes, args.cmd_fd, args.event_fd):
        p.error("--child needs --size-bytes, --cmd-fd and --event-fd")
    if not args.sizes:
        p.error("--sizes is empty")
    if args.chunk_bytes % 4:
        p.error("--chunk-bytes must be a multiple of 4")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.layout:
        print(json.dumps(struct_layout(), indent=2, sort_keys=True))
        return EXIT_OK
    if args.print_ptx:
        print(PTX.lstrip("\n"), end="")
        return EXIT_OK
    if args.child:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when the child ends
        return run_child(args)
    signal.signal(signal.SIGTERM, on_sigterm)
    return run_parent(args)


if __name__ == "__main__":
    sys.exit(main())
