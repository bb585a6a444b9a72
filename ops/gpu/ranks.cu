// Eviction-policy ranks that are more than a policy's score, computed on the
// device without a sort (CuPy's argsort runs Thrust, which a CUDA graph cannot
// hold): SnapKV's score max-pooled over neighbours in position order.
#include "ranks.cuh"

// pol_pool_row per row: s [m, n] float32, pos [m, n] int32, out [m, n] float32,
// all C-contiguous; order, rank [m, n] int32 scratch.  grid (m), block (<= 1024).
extern "C" __global__ void pol_pooled_ranks(const float* s, const int* pos, float* out, int* order, int* rank, int n, int width) {
    const size_t row = (size_t)blockIdx.x * n;
    pol_pool_row(s + row, pos + row, out + row, order + row, rank + row, n, width);
}
