/* Prints, from the real cuda.h, the sizes and offsets that cuda_checkpoint.py's ctypes structures
 * must match (its --layout prints the same keys). Needs only the header, not a GPU:
 *   cc -I /usr/local/cuda/include -o layout_check tests/device/layout_check.c && ./layout_check
 */
#include <stddef.h>
#include <stdio.h>
#include <cuda.h>

#if CUDA_VERSION < 12080
#error "this cuda.h predates the checkpoint API (CUDA 12.8)"
#endif

#define SIZE(t) printf("  \"sizeof_%s\": %zu,\n", #t, sizeof(t))
#define OFF(t, f) printf("  \"offsetof_%s_%s\": %zu,\n", #t, #f, offsetof(t, f))

int main(void)
{
    printf("{\n");
    SIZE(CUuuid);
    SIZE(CUcheckpointLockArgs);
    OFF(CUcheckpointLockArgs, timeoutMs);
    OFF(CUcheckpointLockArgs, reserved0);
    OFF(CUcheckpointLockArgs, reserved1);
    SIZE(CUcheckpointCheckpointArgs);
    SIZE(CUcheckpointGpuPair);
    OFF(CUcheckpointGpuPair, newUuid);
    SIZE(CUcheckpointRestoreArgs);
    OFF(CUcheckpointRestoreArgs, gpuPairs);
    OFF(CUcheckpointRestoreArgs, gpuPairsCount);
    OFF(CUcheckpointRestoreArgs, reserved1);
    SIZE(CUcheckpointUnlockArgs);
    SIZE(CUprocessState);
    printf("  \"CU_PROCESS_STATE_RUNNING\": %d,\n", CU_PROCESS_STATE_RUNNING);
    printf("  \"CU_PROCESS_STATE_LOCKED\": %d,\n", CU_PROCESS_STATE_LOCKED);
    printf("  \"CU_PROCESS_STATE_CHECKPOINTED\": %d,\n", CU_PROCESS_STATE_CHECKPOINTED);
    printf("  \"CU_PROCESS_STATE_FAILED\": %d\n", CU_PROCESS_STATE_FAILED);
    printf("}\n");
    return 0;
}
