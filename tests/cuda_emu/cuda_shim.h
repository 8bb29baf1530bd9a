// What the shipped .cu sources use from CUDA, for the host compiler: the kernels compile with g++
// and run in the emulator of runtime.cpp (each thread of a block a cooperative fiber).
// Included before the .cu file (g++ -include); nothing here is part of the installed package.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

// The sources take their device branches (fastopt/math/common.h); those use only the intrinsics
// below, so the device code paths are what runs.
#define __CUDACC__ 1

#define __global__ inline  // one definition across the translation units that instantiate it
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
// Per-block storage: static (blocks run one after another). The build adds FO_EMU_SHARED(name)
// after each __shared__ declaration: the first thread of a block to pass it fills the variable
// with garbage, as shared memory starts undefined on a GPU (stale values could hide a bug).
#define __shared__ static
#define FO_EMU_SHARED(var) fo_emu::shared_declared(&(var), sizeof(var))

struct uint3 { unsigned int x, y, z; };
struct dim3 { unsigned int x, y, z; };

// Set by the scheduler before it switches to a thread.
extern uint3 threadIdx, blockIdx;
extern dim3 blockDim, gridDim;
constexpr int warpSize = 32;

namespace fo_emu {
void block_barrier();
void warp_barrier(unsigned mask);
uint64_t* warp_exchange();  // the calling thread's warp's 32 exchange slots
unsigned lane_id();
void shared_declared(void* var, size_t bytes);

template <class T>
T shuffle(unsigned mask, T v, int lane_of(int, int), int arg, int width) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle of a wide type");
    uint64_t* slots = warp_exchange();
    const int lane = int(lane_id());
    uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    slots[lane] = bits;
    warp_barrier(mask);  // every lane has written
    const int base = lane - lane % width;
    const int src = lane_of(lane % width, arg);
    T r = v;  // a source outside the segment returns the caller's own value
    if (src >= 0 && src < width) std::memcpy(&r, &slots[base + src], sizeof(T));
    warp_barrier(mask);  // every lane has read before the slots are reused
    return r;
}
inline int lane_down(int l, int d) { return l + d; }
inline int lane_up(int l, int d) { return l - d; }
inline int lane_xor(int l, int m) { return l ^ m; }
inline int lane_idx(int, int s) { return s; }
}  // namespace fo_emu

inline void __syncthreads() { fo_emu::block_barrier(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { fo_emu::warp_barrier(mask); }
template <class T> T __shfl_down_sync(unsigned m, T v, unsigned d, int w = 32) {
    return fo_emu::shuffle(m, v, fo_emu::lane_down, int(d), w);
}
template <class T> T __shfl_up_sync(unsigned m, T v, unsigned d, int w = 32) {
    return fo_emu::shuffle(m, v, fo_emu::lane_up, int(d), w);
}
template <class T> T __shfl_xor_sync(unsigned m, T v, int x, int w = 32) {
    return fo_emu::shuffle(m, v, fo_emu::lane_xor, x, w);
}
template <class T> T __shfl_sync(unsigned m, T v, int s, int w = 32) {
    return fo_emu::shuffle(m, v, fo_emu::lane_idx, s, w);
}

// Fibers switch only at barriers, so a read-modify-write is atomic as written.
template <class T> T atomicAdd(T* a, T v) { T old = *a; *a = old + v; return old; }
template <class T> T atomicSub(T* a, T v) { T old = *a; *a = old - v; return old; }
template <class T> T atomicMax(T* a, T v) { T old = *a; *a = old < v ? v : old; return old; }
template <class T> T atomicMin(T* a, T v) { T old = *a; *a = v < old ? v : old; return old; }
template <class T> T atomicExch(T* a, T v) { T old = *a; *a = v; return old; }
template <class T> T atomicCAS(T* a, T cmp, T v) { T old = *a; if (old == cmp) *a = v; return old; }

inline float __uint_as_float(unsigned int u) { return __builtin_bit_cast(float, u); }
inline unsigned int __float_as_uint(float f) { return __builtin_bit_cast(unsigned int, f); }
inline double __longlong_as_double(long long u) { return __builtin_bit_cast(double, u); }
inline long long __double_as_longlong(double d) { return __builtin_bit_cast(long long, d); }
// sqrtf/sqrt: <cmath>'s, correctly rounded like NVRTC's --prec-sqrt=true; no FMA contraction
// (-ffp-contract=off, as --fmad=false).
