// A CPU emulator for kvrun's CUDA kernels: the prelude emulate.py puts before
// a kernel source to compile it with the host C++ compiler.
//
// Every thread of a block is a fiber on one OS thread; blocks run one after
// another.  The emulated barriers switch fibers millions of times, so on
// x86-64 a switch is eight instructions of our own (emu_switch: the
// callee-saved registers pushed, the stack pointer swapped, popped), not
// glibc's _setjmp/_longjmp (signal masks, unwinding: ~40% of a GPU test's
// time) nor swapcontext (a system call), which other hosts use.  A fiber is
// made once and kept: after a block's thread returns it waits for the next
// block, so a block costs no context set-up either.  __syncthreads and the warp shuffles are barriers that
// switch fibers until every thread (or lane) has arrived, so code that relies
// on them behaves as on a GPU, and code that forgets one usually shows it.
// `__shared__` becomes `static` (one copy, shared by the block's fibers);
// `extern __shared__` arrays are rewritten by emulate.py to point at a
// per-launch buffer of the requested size.
//
// It checks what it can: 2-byte alignment of GGUF block loads (a misaligned
// load faults on a GPU but not on x86); shared memory read before it is
// written (NaN bytes); races between a block's threads or between blocks, when a
// test runs in the other order too (emu_set_order: the blocks last to first, a
// block's threads last to first between barriers; a race then gives other
// numbers); with emulate.py's guard mode, reads and writes past an array's end.
// It knows nothing of timing, memory coalescing or real warp divergence: it is
// for correctness tests only.
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <algorithm>
#include <memory>
#include <vector>
#include <csignal>
#if !defined(__x86_64__)
#include <ucontext.h>
#endif

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
#if defined(__x86_64__)
// A suspended fiber is its stack pointer; its callee-saved registers and resume address lie on its stack.
struct EmuCtx {
    void* sp = nullptr;
};
extern "C" void emu_switch(void** from_sp, void* to_sp);  // (System V: rdi, rsi)
asm(".text\n.p2align 4\n.hidden emu_switch\n.globl emu_switch\n.type emu_switch,@function\nemu_switch:\n"
    "  pushq %rbp\n  pushq %rbx\n  pushq %r12\n  pushq %r13\n  pushq %r14\n  pushq %r15\n"
    "  movq %rsp, (%rdi)\n  movq %rsi, %rsp\n"
    "  popq %r15\n  popq %r14\n  popq %r13\n  popq %r12\n  popq %rbx\n  popq %rbp\n  ret\n"
    ".size emu_switch, .-emu_switch\n");
static inline void emu_ctx_switch(EmuCtx& from, EmuCtx& to) { emu_switch(&from.sp, to.sp); }
// A first switch into the fiber pops six zero registers and "returns" into fn, with the stack
// aligned as after a call (fn never returns: the slot above it is a null return address).
static void emu_ctx_make(EmuCtx& c, char* stack, size_t size, void (*fn)()) {
    void** sp = (void**)(((uintptr_t)(stack + size)) & ~(uintptr_t)15);
    *--sp = nullptr;
    *--sp = (void*)fn;
    for (int i = 0; i < 6; ++i) *--sp = nullptr;
    c.sp = sp;
}
#else
struct EmuCtx {
    ucontext_t uc;
};
static inline void emu_ctx_switch(EmuCtx& from, EmuCtx& to) { swapcontext(&from.uc, &to.uc); }
static void emu_ctx_make(EmuCtx& c, char* stack, size_t size, void (*fn)()) {
    getcontext(&c.uc);
    c.uc.uc_stack.ss_sp = stack;
    c.uc.uc_stack.ss_size = size;
    c.uc.uc_link = nullptr;
    makecontext(&c.uc, fn, 0);
}
#endif

struct EmuFiber {  // one emulated thread; made once, reused by every block and launch
    EmuCtx ctx;
    std::unique_ptr<char[]> stack;  // (uninitialised: only the pages a kernel touches are mapped)
    dim3 tid;
    bool done = true;
    bool lost = false;  // left inside a kernel by a memory fault (emu_on_fault): made again before it runs
};

struct EmuBarrier {
    int count = 0;
    long gen = 0;
};

static EmuCtx emu_main;  // the scheduler
static std::vector<EmuFiber> emu_fibers;
static int emu_cur = 0;
static const std::function<void()>* emu_body = nullptr;
static char* emu_dyn_smem = nullptr;
static EmuBarrier emu_block_bar;
static std::vector<EmuBarrier> emu_warp_bar;
static std::vector<float> emu_shfl;  // [2][n_threads] values exchanged by a shuffle
static int emu_or_acc = 0;

static inline void emu_yield() { emu_ctx_switch(emu_fibers[emu_cur].ctx, emu_main); }

static int emu_reverse = 0;      // run a block's threads last to first between barriers (emulate.py's ORDERS)
static long emu_block_serial = 0;  // one a block run, across launches: when a block's static shared memory starts

extern "C" void emu_set_order(int reverse) { emu_reverse = reverse; }

// A block's static __shared__ arrays start as NaN bytes (0xff: NaN floats, -1 ints), as the dynamic buffer does, so
// a read before any thread wrote shows, where a `static` would hand the block what the previous block left.
// emulate.py puts this after each declaration; the first thread of a block to pass it fills the array.
#define EMU_POISON(name)                                         \
    do {                                                         \
        static long emu_stamp_ = -1;                             \
        if (emu_stamp_ != emu_block_serial) {                    \
            emu_stamp_ = emu_block_serial;                       \
            std::memset((void*)&(name), 0xff, sizeof(name));     \
        }                                                        \
    } while (0)

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

// One barrier a shuffle: the values go to one of two buffers by the barrier's parity.  A lane
// writes the buffer again only two shuffles later, after the next barrier, which every lane
// reaches only once it has read this one.
static inline float __shfl_xor_sync(unsigned, float v, int lane_mask) {
    const int t = emu_linear_tid(), w = t / 32;
    EmuBarrier& b = emu_warp_bar[w];
    float* buf = emu_shfl.data() + (b.gen & 1) * (emu_shfl.size() / 2);
    buf[t] = v;
    emu_wait(b, 32, &emu_done_warp[w]);
    return buf[(t & ~31) | ((t & 31) ^ lane_mask)];
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

// ------------------------------------------------------------------ memory faults (guard mode)
// emulate.py's guard mode puts each argument array against an unmapped page, so a kernel that reads or writes past
// an array's end faults, as it may on a GPU (where it can also land silently in a neighbour).  The fault is caught
// here: the thread is given up as if it had returned (its fiber made again before it next runs), the launch goes on
// to its end without blocking (as after any error) and the error names the address, block and thread.
static int emu_guard = 0;
static bool emu_in_fiber = false;
static struct sigaction emu_prev_segv;

extern "C" void emu_set_guard(int on) { emu_guard = on; }

#if defined(__x86_64__)
static void emu_on_fault(int sig, siginfo_t* si, void*) {
    if (!emu_in_fiber) {  // not a kernel's: the handler from before (Python's faulthandler) takes it
        sigaction(sig, &emu_prev_segv, nullptr);
        return;  // (the faulting instruction runs again, under that handler)
    }
    if (!emu_error[0])
        std::snprintf(emu_error, sizeof emu_error, "memory fault at %p, past the end of an argument array (block %u,%u,%u thread %u)",
                      si->si_addr, blockIdx.x, blockIdx.y, blockIdx.z, threadIdx.x);
    EmuFiber& f = emu_fibers[emu_cur];
    f.done = f.lost = true;
    ++emu_done_block;
    ++emu_done_warp[emu_cur / 32];
    void* abandoned;
    emu_switch(&abandoned, emu_main.sp);  // to the scheduler, as if the thread had returned; never back here
}
#endif

// A fiber's life: run the body for one block's thread, report done, wait to be sent into the next.
static void emu_fiber_main() {
    for (;;) {
        (*emu_body)();
        emu_fibers[emu_cur].done = true;
        ++emu_done_block;
        ++emu_done_warp[emu_cur / 32];
        emu_yield();
    }
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
    while ((int)emu_fibers.size() < n) {  // (a vector of fibers that never moves a live one: grown only here, idle)
        emu_fibers.emplace_back();
        EmuFiber& f = emu_fibers.back();
        f.stack.reset(new char[stack_size]);
        emu_ctx_make(f.ctx, f.stack.get(), stack_size, emu_fiber_main);
    }
    for (int i = 0; i < n; ++i)
        emu_fibers[i].tid = dim3{(unsigned)i % block.x, ((unsigned)i / block.x) % block.y, (unsigned)i / (block.x * block.y)};
#if defined(__x86_64__)
    if (emu_guard) {
        struct sigaction act {};
        act.sa_sigaction = emu_on_fault;
        act.sa_flags = SA_SIGINFO | SA_NODEFER;  // (the handler never returns: later faults must still come)
        sigemptyset(&act.sa_mask);
        sigaction(SIGSEGV, &act, &emu_prev_segv);
    }
#endif
    emu_shfl.assign(2 * (((n + 31) / 32) * 32), 0.0f);
    // (reversed, the blocks run last to first too: a block that reads what another of the launch writes is a race
    // on a GPU, which runs them in any order and side by side)
    const unsigned long long n_blocks = (unsigned long long)grid.x * grid.y * grid.z;
    for (unsigned long long b = 0; b < n_blocks; ++b) {
        const unsigned long long lin = emu_reverse ? n_blocks - 1 - b : b;
        blockIdx = dim3{(unsigned)(lin % grid.x), (unsigned)(lin / grid.x % grid.y), (unsigned)(lin / ((unsigned long long)grid.x * grid.y))};
        ++emu_block_serial;
        std::memset(emu_dyn_smem, 0xff, smem);  // NaN: a read of unwritten shared memory shows
        emu_block_bar = EmuBarrier{};
        emu_warp_bar.assign((n + 31) / 32, EmuBarrier{});
        emu_done_block = 0;
        emu_done_warp.assign((n + 31) / 32, 0);
        emu_or_acc = 0;
        for (int i = 0; i < n; ++i) {
            EmuFiber& f = emu_fibers[i];
            if (f.lost) {
                emu_ctx_make(f.ctx, f.stack.get(), stack_size, emu_fiber_main);
                f.lost = false;
            }
            f.done = false;
        }
        int live = n;
        while (live > 0) {  // round robin until every thread has returned
            live = 0;
            for (int j = 0; j < n; ++j) {
                const int i = emu_reverse ? n - 1 - j : j;
                if (emu_fibers[i].done) continue;
                emu_cur = i;
                threadIdx = emu_fibers[i].tid;
                emu_in_fiber = true;
                emu_ctx_switch(emu_main, emu_fibers[i].ctx);
                emu_in_fiber = false;
                live += !emu_fibers[i].done;
            }
        }
    }
#if defined(__x86_64__)
    if (emu_guard) sigaction(SIGSEGV, &emu_prev_segv, nullptr);
#endif
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
