// Token-switched LoRA adapters on the device (models/graniteswitch.py: Granite Switch): what the CPU's forward does on
// the host from the token ids (a table lookup a token, the router's rounding, the adapters' products), here read from the
// device buffers a captured decode step's token ids live in, so the step copies nothing to the host and replays as a
// CUDA graph.  Token ids outside [0, n_vocab) look up nothing (slot 0; embedded as themselves).
//
//   lora_router_qkv   the router layer's q, k and v rows of each token: q = 1, k = +gain for a control token and -gain
//                     for any other, v = its slot, on channel 0 alone (the rest zeros)
//   lora_route_slots  each token's slot: the router's output (channel 0), clamped to [0, n_adapters] and rounded half
//                     away from zero (ggml_round's roundf), as int32
//   lora_substitute   each token id as it is embedded: a control token's substitute, any other itself
//   lora_add_f32      out[t] += B[s] (A[s] x[t]) for the token's slot s = slots[t]
#include "common.cuh"

// grid-stride over T * hd, block 256.  tokens [T] int32, slot_of [n_vocab] int32 -> q, k, v [T, hd].
extern "C" __global__ void lora_router_qkv(const int* __restrict__ tokens, const int* __restrict__ slot_of, float* __restrict__ q,
                                           float* __restrict__ k, float* __restrict__ v, int T, int hd, int n_vocab, float gain) {
    GRID_STRIDE(i, (long long)T * hd) {
        if (i % hd != 0) {
            q[i] = k[i] = v[i] = 0.0f;
            continue;
        }
        const int tok = tokens[i / hd];
        const int slot = tok >= 0 && tok < n_vocab ? slot_of[tok] : 0;
        q[i] = 1.0f;
        k[i] = slot > 0 ? gain : -gain;
        v[i] = (float)slot;
    }
}

// grid-stride over T, block 256.  att [T, stride] (channel 0 read) -> slots [T] int32.  (fmaxf/fminf keep a NaN out: a
// slot past the adapters' tensors would be read out of bounds.)
extern "C" __global__ void lora_route_slots(const float* __restrict__ att, int* __restrict__ slots, int T, int stride, int n_adapters) {
    for (int t = blockIdx.x * blockDim.x + threadIdx.x; t < T; t += gridDim.x * blockDim.x)
        slots[t] = (int)roundf(fminf(fmaxf(att[(size_t)t * stride], 0.0f), (float)n_adapters));
}

// grid-stride over T, block 256.  tokens [T] int32, shown_as [n_vocab] int32 -> shown [T] int32.
extern "C" __global__ void lora_substitute(const int* __restrict__ tokens, const int* __restrict__ shown_as, int* __restrict__ shown,
                                           int T, int n_vocab) {
    for (int t = blockIdx.x * blockDim.x + threadIdx.x; t < T; t += gridDim.x * blockDim.x) {
        const int tok = tokens[t];
        shown[t] = tok >= 0 && tok < n_vocab ? shown_as[tok] : tok;
    }
}

// grid (T), block 256, shared 4 * rank bytes.  a [n_slots, rank, n_in], b [n_slots, n_out, rank], x [T, n_in],
// slots [T] int32, out [T, n_out]: out[t] += b[s] (a[s] x[t]), s = slots[t] (a slot outside [0, n_slots) adds nothing).
// The adapter's down product into shared memory first, a warp a row of a[s] (its lanes along n_in), then a thread an
// output row of b[s].
extern "C" __global__ void lora_add_f32(const float* __restrict__ a, const float* __restrict__ b, const float* __restrict__ x,
                                        const int* __restrict__ slots, float* __restrict__ out, int n_slots, int rank, int n_in,
                                        int n_out) {
    extern __shared__ float h[];
    const int t = blockIdx.x, s = slots[t];
    if (s < 0 || s >= n_slots) return;  // (the whole block: no barrier is left waiting)
    const int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP, n_warps = blockDim.x / WARP;
    const float* xt = x + (size_t)t * n_in;
    const float* as = a + (size_t)s * rank * n_in;
    for (int j = warp; j < rank; j += n_warps) {
        const float* row = as + (size_t)j * n_in;
        float acc = 0.0f;
        for (int i = lane; i < n_in; i += WARP) acc += row[i] * xt[i];
        acc = warp_sum(acc);
        if (lane == 0) h[j] = acc;
    }
    __syncthreads();
    const float* bs = b + (size_t)s * n_out * rank;
    float* ot = out + (size_t)t * n_out;
    for (int o = threadIdx.x; o < n_out; o += blockDim.x) {
        const float* row = bs + (size_t)o * rank;
        float acc = 0.0f;
        for (int j = 0; j < rank; ++j) acc += row[j] * h[j];
        ot[o] += acc;
    }
}
