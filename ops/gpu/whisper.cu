// The Whisper audio encoder's element-wise op on the device (models/whisper_audio.py, models/vit_device.py
// whisper_rows): Whisper's convolutions, MLPs and Voxtral's projector take the exact GELU, ggml_gelu_erf, which no
// other kernel here computes (t5.cu's is ggml's float16-table tanh GELU, nn.cu's the tanh formula).
//
//   gelu_erf_f32   out = 0.5 x (1 + erf(x / sqrt 2)) in float32 (the CPU's models/whisper_audio.py gelu_erf takes
//                  erf in float64 and rounds: the two differ by an ulp or so)
#include "common.cuh"

// (out may be x)
extern "C" __global__ void gelu_erf_f32(const float* x, float* out, long long n) {
    GRID_STRIDE(i, n) {
        const float v = x[i];
        out[i] = 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
    }
}
