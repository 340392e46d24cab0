// Kernels of tests/device/cuda_checkpoint.py. The PTX embedded there was generated from this file with
//   nvcc -ptx -arch=compute_75 -o kernels.ptx tests/device/kernels.cu
// and its .version line lowered to 7.0 (it uses nothing newer) so that older drivers load it too;
// tests/device/selftest.sh checks that the two agree.
#include <stdint.h>

// A position-dependent pattern: a page or chunk that comes back at the wrong address is caught.
__device__ __forceinline__ uint32_t pattern(uint64_t i, uint32_t seed) {
    uint32_t x = (uint32_t)i * 2654435761u ^ ((uint32_t)(i >> 32) * 2246822519u + seed);
    x ^= x >> 16;
    x *= 0x7feb352du;
    x ^= x >> 15;
    return x;
}

extern "C" __global__ void fill(uint32_t *buf, uint64_t n, uint32_t seed) {
    for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < n;
         i += (uint64_t)gridDim.x * blockDim.x)
        buf[i] = pattern(i, seed);
}

extern "C" __global__ void add(uint32_t *buf, uint64_t n, uint32_t k) {
    for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < n;
         i += (uint64_t)gridDim.x * blockDim.x)
        buf[i] += k;
}

// Counts the words that differ from pattern(i, seed) + offset into *mismatches.
extern "C" __global__ void check(const uint32_t *buf, uint64_t n, uint32_t seed, uint32_t offset,
                                 unsigned long long *mismatches) {
    unsigned long long bad = 0;
    for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < n;
         i += (uint64_t)gridDim.x * blockDim.x)
        bad += buf[i] != pattern(i, seed) + offset;
    if (bad) atomicAdd(mismatches, bad);
}
