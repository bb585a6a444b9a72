// The rope positions of text after pictures in a multimodal-rope (M-RoPE) model (models/mrope_text.py): a picture of
// ny x nx rows takes max(nx, ny) positions but nx * ny cache slots (libmtmd's n_pos), so the text after it turns at
// its slot plus a fixed shift (negative or zero).  Computed on the device from the step's positions, which a captured
// decode step reads from the buffer each replay refills (runtime/graphs.py); the shift is the launch's scalar, and
// the graph's key holds it (MropeText.decode_graph_key), so a replay never turns by another picture's shift.
#include "common.cuh"

// grid-stride over n, block 256.  out[i] = pos[i] + shift.
extern "C" __global__ void mrope_shift_positions(const int* __restrict__ pos, int* __restrict__ out, int shift, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) out[i] = pos[i] + shift;
}
