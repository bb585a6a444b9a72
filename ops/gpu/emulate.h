// A CPU emulator for kvrun's CUDA kernels: the prelude emulate.py puts before
// a kernel source to compile it with the host C++ compiler.
//
// Every thread of a block is a fiber on one OS thread; blocks run one after
// another.  A fiber is started with makecontext/setcontext on its own stack
// and then switched with _setjmp/_longjmp, which unlike swapcontext make no
// system call (the emulated barriers switch fibers millions of times).  __syncthreads and the warp shuffles are barriers that
// switch fibers until every thread (or lane) has arrived, so code that relies
// on them behaves as on a GPU, and code that forgets one usually shows it.
// `__shared__` becomes `static` (one copy, shared by the block's fibers);
// `extern __shared__` arrays are rewritten by emulate.py to point at a
// per-launch buffer of the requested size.
//
// It checks what it can: 2-byte alignment of GGUF block loads (a misaligned
// load faults on a GPU but not on x86).  It knows nothing of timing, memory
// coalescing or real warp divergence: it is for correctness tests only.
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <algorithm>
#include <vector>
#include <csetjmp>
#include <ucontext.h>

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};

static dim3 threadIdx, blockIdx, blockDim, gridDim;

#define __device__
#define __global__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

using std::max;
using std::min;

static inline float __int_as_float(int i) {
    float f;
    std::memcpy(&f, &i, 4);
    return f;
}
static inline float __int_as_float(unsigned i) { return __int_as_float((int)i); }
static inline float emu_expf(float x) { return expf(x); }
#define __expf emu_expf  // glibc declares its own __expf
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }

static inline float emu_h2f(unsigned short h) {
    const unsigned s = (h >> 15) & 1u, e = (h >> 10) & 31u, m = h & 1023u;
    float v;
    if (e == 0) v = std::ldexp((float)m, -24);
    else if (e == 31) v = m ? NAN : INFINITY;
    else v = std::ldexp((float)(m | 1024u), (int)e - 25);
    return s ? -v : v;
}

static inline unsigned short emu_f2h(float f) {  // round to nearest even
    unsigned x;
    std::memcpy(&x, &f, 4);
    const unsigned sign = (x >> 16) & 0x8000u;
    const unsigned ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) return (unsigned short)(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0u));
    if (ax >= 0x477ff000u) return (unsigned short)(sign | 0x7c00u);  // rounds to >= 65520: inf
    if (ax < 0x38800000u) {  // half subnormal or zero: value / 2^-24, rounded
        float a;
        std::memcpy(&a, &ax, 4);
        return (unsigned short)(sign | (unsigned)std::nearbyint(a * 16777216.0f));
    }
    unsigned r = ax - 0x38000000u;  // rebias exponent 127 -> 15 (in the 13-bit shifted domain)
    const unsigned lsb = (r >> 13) & 1u;
    r += 0xfffu + lsb;
    return (unsigned short)(sign | (r >> 13));
}

static char emu_error[256];

static inline void emu_check_aligned(const void* p, unsigned n) {
    if (((uintptr_t)p % n) && !emu_error[0])
        std::snprintf(emu_error, sizeof emu_error, "misaligned %u-byte load at %p (block %u,%u,%u thread %u)", n, p,
                      blockIdx.x, blockIdx.y, blockIdx.z, threadIdx.x);
}

// ------------------------------------------------------------------ fibers
struct EmuFiber {
    ucontext_t ctx;  // for the first entry only
    jmp_buf jb;      // where it yielded
    dim3 tid;
    bool started, done;
};

struct EmuBarrier {
    int count = 0;
    long gen = 0;
};

static jmp_buf emu_main;  // the scheduler
static std::vector<EmuFiber> emu_fibers;
static std::vector<std::vector<char>> emu_stacks;
static int emu_cur = 0;
static const std::function<void()>* emu_body = nullptr;
static char* emu_dyn_smem = nullptr;
static EmuBarrier emu_block_bar;
static std::vector<EmuBarrier> emu_warp_bar;
static std::vector<float> emu_shfl;  // [n_threads] values exchanged by a shuffle
static int emu_or_acc = 0;

static inline void emu_yield() {
    if (!_setjmp(emu_fibers[emu_cur].jb)) _longjmp(emu_main, 1);
}

static int emu_done_block = 0;         // threads of the block that have returned
static std::vector<int> emu_done_warp;  // ... per warp

// Wait until n threads have arrived.  A barrier some thread can no longer
// reach (it returned) would hang a GPU; here it is reported and released.
static inline void emu_wait(EmuBarrier& b, int n, const int* done_in_scope) {
    if (emu_error[0]) return;  // after an error, run to the end without blocking
    const long g = b.gen;
    if (++b.count == n) {
        b.count = 0;
        ++b.gen;
        return;
    }
    while (b.gen == g) {
        if (emu_error[0]) return;
        if (*done_in_scope > 0) {
            std::snprintf(emu_error, sizeof emu_error, "barrier not reached by threads that returned (block %u,%u,%u)",
                          blockIdx.x, blockIdx.y, blockIdx.z);
            return;
        }
        emu_yield();
    }
}

static inline int emu_nthreads() { return (int)(blockDim.x * blockDim.y * blockDim.z); }
static inline int emu_linear_tid() {
    return (int)(threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z));
}

static inline void __syncthreads() { emu_wait(emu_block_bar, emu_nthreads(), &emu_done_block); }

static inline int __syncthreads_or(int p) {
    __syncthreads();
    if (p) emu_or_acc = 1;
    __syncthreads();
    const int r = emu_or_acc;
    __syncthreads();
    if (emu_linear_tid() == 0) emu_or_acc = 0;  // nobody sets it before the next call's first barrier
    return r;
}

static inline float __shfl_xor_sync(unsigned, float v, int lane_mask) {
    const int t = emu_linear_tid(), w = t / 32;
    EmuBarrier& b = emu_warp_bar[w];
    emu_shfl[t] = v;
    emu_wait(b, 32, &emu_done_warp[w]);
    const float r = emu_shfl[(t & ~31) | ((t & 31) ^ lane_mask)];
    emu_wait(b, 32, &emu_done_warp[w]);
    return r;
}

static inline int __shfl_xor_sync(unsigned m, int v, int lane_mask) {  // the bits travel through the float slot
    float f;
    std::memcpy(&f, &v, 4);
    f = __shfl_xor_sync(m, f, lane_mask);
    int r;
    std::memcpy(&r, &f, 4);
    return r;
}

// rounding-mode intrinsics (round to nearest, never contracted: the host compiler does not contract either)
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fdiv_rn(float a, float b) { return a / b; }

static void emu_entry() {
    (*emu_body)();
    emu_fibers[emu_cur].done = true;
    ++emu_done_block;
    ++emu_done_warp[emu_cur / 32];
    _longjmp(emu_main, 1);  // never returns: the scheduler sees done and moves on
}

// Run body once per thread of every block of the grid.
static void emu_launch(dim3 grid, dim3 block, size_t smem, const std::function<void()>& body) {
    const int n = (int)(block.x * block.y * block.z);
    const size_t stack_size = 256 * 1024;
    std::vector<char> dyn(smem + 16);
    gridDim = grid;
    blockDim = block;
    emu_body = &body;
    emu_dyn_smem = dyn.data();
    emu_fibers.assign(n, EmuFiber{});
    while ((int)emu_stacks.size() < n) emu_stacks.emplace_back(stack_size);
    emu_shfl.assign(((n + 31) / 32) * 32, 0.0f);
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx) {
                blockIdx = dim3{bx, by, bz};
                std::memset(emu_dyn_smem, 0xff, smem);  // NaN: a read of unwritten shared memory shows
                emu_block_bar = EmuBarrier{};
                emu_warp_bar.assign((n + 31) / 32, EmuBarrier{});
                emu_done_block = 0;
                emu_done_warp.assign((n + 31) / 32, 0);
                emu_or_acc = 0;
                for (int i = 0; i < n; ++i) {
                    EmuFiber& f = emu_fibers[i];
                    f.tid = dim3{(unsigned)i % block.x, ((unsigned)i / block.x) % block.y, (unsigned)i / (block.x * block.y)};
                    f.started = f.done = false;
                    getcontext(&f.ctx);
                    f.ctx.uc_stack.ss_sp = emu_stacks[i].data();
                    f.ctx.uc_stack.ss_size = stack_size;
                    f.ctx.uc_link = nullptr;
                    makecontext(&f.ctx, emu_entry, 0);
                }
                int live = n;
                while (live > 0) {  // round robin until every thread has returned
                    live = 0;
                    for (int i = 0; i < n; ++i) {
                        if (emu_fibers[i].done) continue;
                        emu_cur = i;
                        threadIdx = emu_fibers[i].tid;
                        if (!_setjmp(emu_main)) {
                            if (!emu_fibers[i].started) {
                                emu_fibers[i].started = true;
                                setcontext(&emu_fibers[i].ctx);
                            }
                            _longjmp(emu_fibers[i].jb, 1);
                        }
                        live += !emu_fibers[i].done;
                    }
                }
            }
}

// Pointer arguments come in as void*; this converts to whatever the kernel takes.
struct EmuPtr {
    void* p;
    template <class T>
    operator T*() const {
        return (T*)p;
    }
};

extern "C" const char* emu_take_error() {
    static char msg[256];
    std::memcpy(msg, emu_error, sizeof msg);
    emu_error[0] = 0;
    return msg;
}
