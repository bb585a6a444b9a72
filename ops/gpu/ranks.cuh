// Eviction-policy ranks beyond a policy's score, for one row of slots: shared by
// the ranking kernel (ranks.cu) and the prefill push (kvquant.cu).
#pragma once
#include "common.cuh"

// SnapKV's ranks (cache/policies/snapkv.py _pooled) of one row, by the whole
// block: slot i's stable rank in position order (how many slots hold an earlier
// position, or the same one at a lower index, as a stable argsort orders them),
// then out[i] = the max of s over the slots ranked rank(i) - width/2 ..
// rank(i) - width/2 + width - 1, the ends repeated (numpy's edge padding).
// s, p (positions), out: [n]; order, rank: [n] int scratch.  Threads stride the
// slots: O(n^2) compares, no sort.  Every thread must call it (barriers).
__device__ void pol_pool_row(const float* s, const int* p, float* out, int* order, int* rank, int n, int width) {
    __syncthreads();  // s and p may have just been written
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const int pi = p[i];
        int r = 0;
        for (int l = 0; l < n; ++l) r += p[l] < pi || (p[l] == pi && l < i);
        rank[i] = r;
        order[r] = i;
    }
    __syncthreads();
    const int half = width / 2;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const int r = rank[i];
        float best = s[i];
        for (int o = -half; o < width - half; ++o) {
            int t = r + o;
            t = t < 0 ? 0 : t > n - 1 ? n - 1 : t;
            const float v = s[order[t]];
            best = v > best ? v : best;
        }
        out[i] = best;
    }
    __syncthreads();
}
