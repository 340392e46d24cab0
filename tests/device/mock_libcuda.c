/* A stand-in for libcuda.so.1 on a machine WITHOUT a GPU. It is not CUDA and proves nothing about
 * CUDA: it exists so that cuda_checkpoint.py's own plumbing (the child process and its pipes, the
 * state checks, timings, JSON and exit codes) can be run before a GPU session spends its minutes.
 * tests/device/selftest.sh builds and uses it.
 *
 * "Device memory" is host memory. The three kernels of kernels.cu run on the CPU, found by name
 * in the PTX that cuModuleLoadDataEx is given. The checkpoint API keeps each process's state in a
 * file ($MOCK_CUDA_STATE_DIR/mockcuda-<pid>); "checkpoint" signals the child, which scrambles its
 * buffers in place (XOR), and "restore" unscrambles them, so data that does not come back intact
 * is caught by the script's checks.
 *
 * Environment: MOCK_CUDA_DRIVER_VERSION (default 13000), MOCK_CUDA_TOTAL_MIB (default 1024),
 * MOCK_CUDA_STATE_DIR (default /tmp), MOCK_CUDA_CORRUPT=1 (restore leaves one word wrong),
 * MOCK_CUDA_UNSUPPORTED=1 (the checkpoint API answers CUDA_ERROR_NOT_SUPPORTED),
 * MOCK_CUDA_CHECKPOINT_MS (a checkpoint takes this long, so a test can interrupt it).
 * Built with -DMOCK_NO_CHECKPOINT it exports no checkpoint symbols, like a driver before r570.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef int CUresult;
typedef uint64_t CUdeviceptr;

enum {
    OK = 0, INVALID_VALUE = 1, OUT_OF_MEMORY = 2, NOT_INITIALIZED = 3, NOT_FOUND = 500,
    ILLEGAL_STATE = 401, NOT_SUPPORTED = 801, UNKNOWN = 999,
};
enum { RUNNING = 0, LOCKED = 1, CHECKPOINTED = 2 };

#define MAX_ALLOCS 4096
static struct { uint32_t *p; size_t words; } allocs[MAX_ALLOCS];
static size_t used_bytes;
static int initialised;
static int have_context;

static long env_long(const char *name, long dflt)
{
    const char *v = getenv(name);
    return v && *v ? strtol(v, NULL, 0) : dflt;
}

static size_t total_bytes(void) { return (size_t)env_long("MOCK_CUDA_TOTAL_MIB", 1024) << 20; }

static void state_path(int pid, char *buf, size_t len)
{
    const char *dir = getenv("MOCK_CUDA_STATE_DIR");
    snprintf(buf, len, "%s/mockcuda-%d", dir && *dir ? dir : "/tmp", pid);
}

/* Async-signal-safe: called from the signal handlers too. */
static int write_state(int pid, int state)
{
    char path[256], c = (char)('0' + state);
    state_path(pid, path, sizeof path);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0)
        return -1;
    ssize_t n = write(fd, &c, 1);
    close(fd);
    return n == 1 ? 0 : -1;
}

static int read_state(int pid)
{
    char path[256], c = 0;
    state_path(pid, path, sizeof path);
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, &c, 1);
    close(fd);
    return n == 1 ? c - '0' : -1;
}

static void scramble(void)
{
    for (size_t a = 0; a < MAX_ALLOCS; a++)
        for (size_t i = 0; allocs[a].p && i < allocs[a].words; i++)
            allocs[a].p[i] ^= 0x5A5A5A5Au;
}

static void on_checkpoint(int sig)
{
    (void)sig;
    scramble();
    write_state(getpid(), CHECKPOINTED);
}

static void on_restore(int sig)
{
    (void)sig;
    scramble();
    for (size_t a = 0; env_long("MOCK_CUDA_CORRUPT", 0) && a < MAX_ALLOCS; a++)
        if (allocs[a].p && allocs[a].words > 2) { /* a buffer, not the 8-byte counter */
            allocs[a].p[allocs[a].words / 2] ^= 1;
            break;
        }
    write_state(getpid(), LOCKED);
}

static void forget_state(void)
{
    char path[256];
    if (!have_context)
        return;
    state_path(getpid(), path, sizeof path);
    unlink(path);
    have_context = 0;
}

/* What the real driver would block on; here a call made while not running is an error. */
static CUresult usable(void)
{
    if (!initialised)
        return NOT_INITIALIZED;
    if (have_context && read_state(getpid()) != RUNNING)
        return ILLEGAL_STATE;
    return OK;
}

CUresult cuInit(unsigned int flags)
{
    (void)flags;
    initialised = 1;
    return OK;
}

CUresult cuDriverGetVersion(int *v)
{
    *v = (int)env_long("MOCK_CUDA_DRIVER_VERSION", 13000);
    return OK;
}

CUresult cuGetErrorName(CUresult e, const char **s)
{
    switch (e) {
    case OK: *s = "CUDA_SUCCESS"; break;
    case INVALID_VALUE: *s = "CUDA_ERROR_INVALID_VALUE"; break;
    case OUT_OF_MEMORY: *s = "CUDA_ERROR_OUT_OF_MEMORY"; break;
    case NOT_INITIALIZED: *s = "CUDA_ERROR_NOT_INITIALIZED"; break;
    case ILLEGAL_STATE: *s = "CUDA_ERROR_ILLEGAL_STATE"; break;
    case NOT_FOUND: *s = "CUDA_ERROR_NOT_FOUND"; break;
    case NOT_SUPPORTED: *s = "CUDA_ERROR_NOT_SUPPORTED"; break;
    default: *s = "CUDA_ERROR_UNKNOWN"; return INVALID_VALUE;
    }
    return OK;
}

CUresult cuGetErrorString(CUresult e, const char **s) { return cuGetErrorName(e, s); }

CUresult cuDeviceGetCount(int *n)
{
    if (!initialised)
        return NOT_INITIALIZED;
    *n = 1;
    return OK;
}

CUresult cuDeviceGet(int *dev, int ordinal)
{
    if (ordinal != 0)
        return INVALID_VALUE;
    *dev = 0;
    return OK;
}

CUresult cuDeviceGetName(char *name, int len, int dev)
{
    (void)dev;
    snprintf(name, (size_t)len, "Mock GPU (tests/device/mock_libcuda.c, not a GPU)");
    return OK;
}

CUresult cuDeviceGetUuid_v2(unsigned char *uuid, int dev)
{
    (void)dev;
    for (int i = 0; i < 16; i++)
        uuid[i] = (unsigned char)(0x11 * i); /* starts with a zero byte, as real ones may */
    return OK;
}

CUresult cuDeviceTotalMem_v2(size_t *bytes, int dev)
{
    (void)dev;
    *bytes = total_bytes();
    return OK;
}

CUresult cuDeviceGetAttribute(int *v, int attr, int dev)
{
    (void)dev;
    *v = attr == 16 ? 4 : 0; /* CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT */
    return OK;
}

CUresult cuDevicePrimaryCtxRetain(void **ctx, int dev)
{
    (void)dev;
    if (!initialised)
        return NOT_INITIALIZED;
    struct sigaction sa = {0};
    sa.sa_flags = SA_RESTART;
    sa.sa_handler = on_checkpoint;
    sigaction(SIGUSR1, &sa, NULL);
    sa.sa_handler = on_restore;
    sigaction(SIGUSR2, &sa, NULL);
    if (write_state(getpid(), RUNNING) != 0)
        return UNKNOWN;
    if (!have_context)
        atexit(forget_state);
    have_context = 1;
    *ctx = (void *)0x1;
    return OK;
}

CUresult cuDevicePrimaryCtxRelease_v2(int dev)
{
    (void)dev;
    forget_state();
    return OK;
}

CUresult cuCtxSetCurrent(void *ctx) { return ctx ? OK : INVALID_VALUE; }
CUresult cuCtxSynchronize(void) { return usable(); }

CUresult cuMemGetInfo_v2(size_t *free_bytes, size_t *total)
{
    *total = total_bytes();
    *free_bytes = *total - used_bytes;
    return OK;
}

CUresult cuMemAlloc_v2(CUdeviceptr *ptr, size_t size)
{
    CUresult r = usable();
    if (r != OK)
        return r;
    if (used_bytes + size > total_bytes())
        return OUT_OF_MEMORY;
    for (size_t a = 0; a < MAX_ALLOCS; a++) {
        if (allocs[a].p)
            continue;
        allocs[a].p = malloc(size);
        if (!allocs[a].p)
            return OUT_OF_MEMORY;
        allocs[a].words = size / 4;
        used_bytes += size;
        *ptr = (CUdeviceptr)(uintptr_t)allocs[a].p;
        return OK;
    }
    return OUT_OF_MEMORY;
}

CUresult cuMemFree_v2(CUdeviceptr ptr)
{
    for (size_t a = 0; a < MAX_ALLOCS; a++) {
        if ((CUdeviceptr)(uintptr_t)allocs[a].p != ptr)
            continue;
        used_bytes -= allocs[a].words * 4;
        free(allocs[a].p);
        allocs[a].p = NULL;
        allocs[a].words = 0;
        return OK;
    }
    return INVALID_VALUE;
}

CUresult cuMemsetD32_v2(CUdeviceptr dst, unsigned int v, size_t n)
{
    CUresult r = usable();
    uint32_t *p = (uint32_t *)(uintptr_t)dst;
    for (size_t i = 0; r == OK && i < n; i++)
        p[i] = v;
    return r;
}

CUresult cuMemcpyDtoH_v2(void *dst, CUdeviceptr src, size_t n)
{
    CUresult r = usable();
    if (r == OK)
        memcpy(dst, (void *)(uintptr_t)src, n);
    return r;
}

/* Modules: the PTX text itself; functions: 1 fill, 2 add, 3 check. */
CUresult cuModuleLoadDataEx(void **mod, const char *image, unsigned n, int *opts, void **vals)
{
    (void)n, (void)opts, (void)vals;
    if (!strstr(image, ".version") || !strstr(image, ".target"))
        return 218; /* CUDA_ERROR_INVALID_PTX */
    *mod = strdup(image);
    return OK;
}

CUresult cuModuleGetFunction(void **func, void *mod, const char *name)
{
    static const char *names[] = {"fill", "add", "check"};
    char entry[64];
    snprintf(entry, sizeof entry, ".entry %s(", name);
    if (!strstr((const char *)mod, entry))
        return NOT_FOUND;
    for (uintptr_t i = 0; i < 3; i++)
        if (strcmp(name, names[i]) == 0) {
            *func = (void *)(i + 1);
            return OK;
        }
    return NOT_FOUND;
}

static uint32_t pattern(uint64_t i, uint32_t seed)
{
    uint32_t x = (uint32_t)i * 2654435761u ^ ((uint32_t)(i >> 32) * 2246822519u + seed);
    x ^= x >> 16;
    x *= 0x7feb352du;
    x ^= x >> 15;
    return x;
}

CUresult cuLaunchKernel(void *f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                        unsigned bz, unsigned shared, void *stream, void **params, void **extra)
{
    (void)gy, (void)gz, (void)by, (void)bz, (void)shared, (void)stream, (void)extra;
    CUresult r = usable();
    if (r != OK)
        return r;
    if (!gx || !bx || !params)
        return INVALID_VALUE;
    uint32_t *buf = (uint32_t *)(uintptr_t)*(uint64_t *)params[0];
    uint64_t n = *(uint64_t *)params[1];
    uint32_t a = *(uint32_t *)params[2];
    switch ((uintptr_t)f) {
    case 1:
        for (uint64_t i = 0; i < n; i++)
            buf[i] = pattern(i, a);
        return OK;
    case 2:
        for (uint64_t i = 0; i < n; i++)
            buf[i] += a;
        return OK;
    case 3: {
        uint32_t offset = *(uint32_t *)params[3];
        unsigned long long *out = (unsigned long long *)(uintptr_t)*(uint64_t *)params[4];
        unsigned long long bad = 0;
        for (uint64_t i = 0; i < n; i++)
            bad += buf[i] != pattern(i, a) + offset;
        *out += bad;
        return OK;
    }
    }
    return INVALID_VALUE;
}

#ifndef MOCK_NO_CHECKPOINT
static CUresult await_state(int pid, int want)
{
    struct timespec ms = {0, 1000000};
    for (int i = 0; i < 30000; i++) {
        if (read_state(pid) == want)
            return OK;
        if (kill(pid, 0) != 0)
            return UNKNOWN;
        nanosleep(&ms, NULL);
    }
    return UNKNOWN;
}

static CUresult transition(int pid, const void *args, int from, int to, int sig)
{
    if (!initialised)
        return NOT_INITIALIZED;
    if (env_long("MOCK_CUDA_UNSUPPORTED", 0))
        return NOT_SUPPORTED;
    /* Every argument structure is 64 bytes; all but the lock timeout must be zero. */
    const unsigned char *b = args;
    for (int i = from == RUNNING ? 4 : 0; b && i < 64; i++)
        if (b[i])
            return INVALID_VALUE;
    int state = read_state(pid);
    if (state < 0)
        return INVALID_VALUE;
    if (state != from)
        return ILLEGAL_STATE;
    if (!sig)
        return write_state(pid, to) == 0 ? OK : UNKNOWN;
    long ms = to == CHECKPOINTED ? env_long("MOCK_CUDA_CHECKPOINT_MS", 0) : 0;
    struct timespec delay = {ms / 1000, (ms % 1000) * 1000000};
    while (ms && nanosleep(&delay, &delay) != 0 && errno == EINTR)
        ;
    if (kill(pid, sig) != 0)
        return UNKNOWN;
    return await_state(pid, to);
}

CUresult cuCheckpointProcessGetState(int pid, int *state)
{
    if (!initialised)
        return NOT_INITIALIZED;
    if (env_long("MOCK_CUDA_UNSUPPORTED", 0))
        return NOT_SUPPORTED;
    *state = read_state(pid);
    return *state < 0 ? INVALID_VALUE : OK;
}

CUresult cuCheckpointProcessGetRestoreThreadId(int pid, int *tid)
{
    int state;
    CUresult r = cuCheckpointProcessGetState(pid, &state);
    if (r == OK)
        *tid = pid;
    return r;
}

CUresult cuCheckpointProcessLock(int pid, void *args) { return transition(pid, args, RUNNING, LOCKED, 0); }
CUresult cuCheckpointProcessCheckpoint(int pid, void *args) { return transition(pid, args, LOCKED, CHECKPOINTED, SIGUSR1); }
CUresult cuCheckpointProcessRestore(int pid, void *args) { return transition(pid, args, CHECKPOINTED, LOCKED, SIGUSR2); }
CUresult cuCheckpointProcessUnlock(int pid, void *args) { return transition(pid, args, LOCKED, RUNNING, 0); }
#endif

CUresult cuGetProcAddress_v2(const char *symbol, void **fn, int version, uint64_t flags, int *status)
{
    (void)flags;
    *fn = NULL;
    *status = 1; /* CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND */
#ifndef MOCK_NO_CHECKPOINT
    static const struct { const char *name; void *fn; } table[] = {
        {"cuCheckpointProcessGetRestoreThreadId", (void *)cuCheckpointProcessGetRestoreThreadId},
        {"cuCheckpointProcessGetState", (void *)cuCheckpointProcessGetState},
        {"cuCheckpointProcessLock", (void *)cuCheckpointProcessLock},
        {"cuCheckpointProcessCheckpoint", (void *)cuCheckpointProcessCheckpoint},
        {"cuCheckpointProcessRestore", (void *)cuCheckpointProcessRestore},
        {"cuCheckpointProcessUnlock", (void *)cuCheckpointProcessUnlock},
    };
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
        if (strcmp(symbol, table[i].name) == 0) {
            if (version < 12080) {
                *status = 2; /* CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT */
                return NOT_FOUND;
            }
            *fn = table[i].fn;
            *status = 0;
            return OK;
        }
#else
    (void)symbol, (void)version;
#endif
    return NOT_FOUND;
}
