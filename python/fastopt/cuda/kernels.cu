// CUDA drivers of the optimizer rules and the gradient norm. The per-element maths is the same
// header code the CPU kernels compile (fastopt/math); only the walk over indices is here.
// Compiled by NVRTC through CuPy (fastopt/cuda/_nvrtc.py has the options, --fmad=false).
#include "fastopt/math/all.h"
#include "fastopt/math/ema.h"

namespace {

// VEC consecutive elements of type T, aligned to their size: the compiler emits one vector load
// (two for 32-byte double packs, the widest load being 16 bytes).
template <class T, int VEC> struct alignas(sizeof(T) * VEC) Pack { T v[VEC]; };

template <class T, int VEC>
__device__ __forceinline__ Pack<T, VEC> load_pack(const T* base, long long group) {
    return reinterpret_cast<const Pack<T, VEC>*>(base)[group];
}

template <class T, int VEC>
__device__ __forceinline__ void store_pack(T* base, long long group, const Pack<T, VEC>& pack) {
    reinterpret_cast<Pack<T, VEC>*>(base)[group] = pack;
}

}  // namespace

constexpr int kVec = 4;

// One step of `Rule` (variant V) over n elements, and, unless E is fastopt::NoEma, the EMA of the weights
// (fastopt/math/ema.h) per element while the new parameter is in registers: ema <- ema + w (new -
// ema) in float32 (float64 for a float64 EMA), the new value being the master copy of a half param
// that has one. When every pointer is aligned to its pack size (`aligned`), threads take packs of
// kVec elements and the tail goes element by element; else every element is taken alone. Scalars
// arrive as doubles in the rule's documented order and are rounded to the compute type C here, as
// on the host. Unused state pointers are never read.
// kStochastic: bfloat16 params without master weights, stored with stochastic rounding.
// Threads first, first + stride, ... take the packs (or elements) of [0, n); element i is element
// index_base + i of its array (the index stochastic rounding draws from).
template <class Rule, int V, class C, class P, class G, class S, bool kStochastic, class E>
__device__ __forceinline__ void step_body(P* __restrict__ param, const G* __restrict__ grad,
                                          float* __restrict__ master, S* __restrict__ s0, S* __restrict__ s1,
                                          S* __restrict__ s2, long long n, bool aligned, long long first,
                                          long long stride, long long index_base,
                                          const fastopt::Prologue<C>& pro,
                                          const typename Rule::template Scalars<C>& k, E* __restrict__ ema,
                                          double ema_weight) {
    using namespace fastopt;
    using T = typename EmaOf<E>::compute;
    constexpr bool with_ema = EmaOf<E>::present;
    const T w = T(ema_weight);
    constexpr int num_states = Rule::num_states(V);
    constexpr bool has_master = is_half<P>::value && !kStochastic;

    long long done = 0;
    if (aligned) {
        const long long groups = n / kVec;
        for (long long g = first; g < groups; g += stride) {
            Pack<P, kVec> p = load_pack<P, kVec>(param, g);
            Pack<G, kVec> gr;
            if constexpr (RuleReadsGrad<Rule>::at(V)) gr = load_pack<G, kVec>(grad, g);
            Pack<float, kVec> m;
            Pack<S, kVec> a, b, c;
            Pack<E, kVec> e;
            if constexpr (with_ema) e = load_pack<E, kVec>(ema, g);
            if constexpr (has_master) m = load_pack<float, kVec>(master, g);
            if constexpr (num_states > 0) a = load_pack<S, kVec>(s0, g);
            if constexpr (num_states > 1) b = load_pack<S, kVec>(s1, g);
            if constexpr (num_states > 2) c = load_pack<S, kVec>(s2, g);
#pragma unroll
            for (int j = 0; j < kVec; ++j) {
                step_element<Rule, V, C, P, G, S, kStochastic>(j, p.v, gr.v, m.v, a.v, b.v, c.v, pro, k,
                                                               index_base + g * kVec + j);
                if constexpr (with_ema) ema_element<E, T>(e.v, j, ema_source<T, has_master>(m.v, p.v, j), w);
            }
            store_pack<P, kVec>(param, g, p);
            if constexpr (with_ema) store_pack<E, kVec>(ema, g, e);
            if constexpr (has_master) store_pack<float, kVec>(master, g, m);
            if constexpr (num_states > 0) store_pack<S, kVec>(s0, g, a);
            if constexpr (num_states > 1) store_pack<S, kVec>(s1, g, b);
            if constexpr (num_states > 2) store_pack<S, kVec>(s2, g, c);
        }
        done = groups * kVec;
    }
    for (long long i = done + first; i < n; i += stride) {
        step_element<Rule, V, C, P, G, S, kStochastic>(i, param, grad, master, s0, s1, s2, pro, k, index_base + i);
        if constexpr (with_ema) ema_element<E, T>(ema, i, ema_source<T, has_master>(master, param, i), w);
    }
}

// A list of arrays in one launch (fastopt/_multi.py's segment table), when table_count > 0; the
// single-array arguments are then unused. Segment s has the pointers
// table_pointers[s * kSegmentPointers + j] (param, grad, master, s0, s1, s2, EMA; unused ones
// repeat param) and the fields table_segments[s * kSegmentFields + j]: its size, its row of
// table_rows (the rule's scalars, then grad_scale, weight_decay and decay_factor from column
// kTableScalars), its rounding seed, whether its pointers are aligned to their packs, and its first
// block. Each block steps kChunk elements of one segment: the grid is the sum of the segments'
// chunk counts. Element for element the same maths as one launch per array: the same bits.
constexpr int kSegmentPointers = 7;
constexpr int kSegmentFields = 5;
constexpr int kTableScalars = 12;
constexpr long long kChunk = 8192;  // a multiple of kVec: chunks keep their array's alignment

// The kernels' shared leading parameters: one array, its prologue and its rule's scalars, then the
// segment table.
#define FASTOPT_STEP_PARAMS                                                                                   \
    P *__restrict__ param, const G *__restrict__ grad, float *__restrict__ master, S *__restrict__ s0,        \
        S *__restrict__ s1, S *__restrict__ s2, long long n, bool aligned, double grad_scale,                \
        double weight_decay, double decay_factor, unsigned int rounding_seed, double k0, double k1, double k2, \
        double k3, double k4, double k5, double k6, double k7, double k8, double k9, double k10, double k11,  \
        const unsigned long long *__restrict__ table_pointers, const long long *__restrict__ table_segments,   \
        int table_count, const double *__restrict__ table_rows, const double *__restrict__ table_ema_weights

// The step of one array (table_count == 0), or of this block's chunk of its segment.
template <class Rule, int V, class C, class P, class G, class S, bool kStochastic, class E>
__device__ __forceinline__ void step_launch(FASTOPT_STEP_PARAMS, E* __restrict__ ema, double ema_weight) {
    const double host_scalars[kTableScalars] = {k0, k1, k2, k3, k4, k5, k6, k7, k8, k9, k10, k11};
    const double* scalars = host_scalars;
    const double* prologue = nullptr;
    long long first = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long stride = (long long)gridDim.x * blockDim.x;
    long long start = 0;
    if (table_count > 0) {
        int lo = 0, hi = table_count - 1;  // the last segment whose first block is at most this one
        while (lo < hi) {
            const int mid = (lo + hi + 1) / 2;
            if (table_segments[mid * kSegmentFields + 4] <= (long long)blockIdx.x) lo = mid;
            else hi = mid - 1;
        }
        const long long* info = table_segments + lo * kSegmentFields;
        const unsigned long long* at = table_pointers + lo * kSegmentPointers;
        start = ((long long)blockIdx.x - info[4]) * kChunk;
        n = info[0] - start < kChunk ? info[0] - start : kChunk;
        aligned = info[3] != 0;
        rounding_seed = (unsigned int)info[2];
        scalars = table_rows + info[1] * (kTableScalars + 3);
        prologue = scalars + kTableScalars;
        first = threadIdx.x;
        stride = blockDim.x;
        param = reinterpret_cast<P*>(at[0]) + start;
        grad = reinterpret_cast<const G*>(at[1]) + start;
        master = reinterpret_cast<float*>(at[2]) + start;
        s0 = reinterpret_cast<S*>(at[3]) + start;
        s1 = reinterpret_cast<S*>(at[4]) + start;
        s2 = reinterpret_cast<S*>(at[5]) + start;
        if constexpr (fastopt::EmaOf<E>::present) {
            ema = reinterpret_cast<E*>(at[6]) + start;
            ema_weight = table_ema_weights[lo];
        }
    }
    const typename Rule::template Scalars<C> k(scalars);
    const fastopt::Prologue<C> pro{C(prologue ? prologue[0] : grad_scale), C(prologue ? prologue[1] : weight_decay),
                                   C(prologue ? prologue[2] : decay_factor), rounding_seed};
    step_body<Rule, V, C, P, G, S, kStochastic, E>(param, grad, master, s0, s1, s2, n, aligned, first, stride, start,
                                                   pro, k, ema, ema_weight);
}

#define FASTOPT_STEP_ARGS                                                                                  \
    param, grad, master, s0, s1, s2, n, aligned, grad_scale, weight_decay, decay_factor, rounding_seed, k0, k1, \
        k2, k3, k4, k5, k6, k7, k8, k9, k10, k11, table_pointers, table_segments, table_count, table_rows,     \
        table_ema_weights

template <class Rule, int V, class C, class P, class G, class S, bool kStochastic>
__global__ void optimizer_step_kernel(FASTOPT_STEP_PARAMS) {
    step_launch<Rule, V, C, P, G, S, kStochastic, fastopt::NoEma>(FASTOPT_STEP_ARGS, nullptr, 0.0);
}

// The step fused with the EMA of the weights, stored as E.
template <class Rule, int V, class C, class P, class G, class S, bool kStochastic, class E>
__global__ void optimizer_step_ema_kernel(FASTOPT_STEP_PARAMS, E* __restrict__ ema, double ema_weight) {
    step_launch<Rule, V, C, P, G, S, kStochastic, E>(FASTOPT_STEP_ARGS, ema, ema_weight);
}

// Sum of squares in float64, in an order fixed by n alone (the grid size is a function of n):
// each thread sums a grid-stride sequence, warps reduce with shuffles in a fixed tree, and
// block sums are written to `partial`; sum_partials adds those in one block, in a fixed order.
template <class T>
__global__ void sum_of_squares_kernel(const T* __restrict__ x, long long n, double* __restrict__ partial) {
    __shared__ double warp_sums[32];
    double acc = 0.0;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        double v = fastopt::load_as<double>(x[i]);
        acc += v * v;
    }
    for (int offset = 16; offset > 0; offset /= 2) acc += __shfl_down_sync(0xffffffffu, acc, offset);
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    if (lane == 0) warp_sums[warp] = acc;
    __syncthreads();
    if (warp == 0) {
        acc = lane < (int)(blockDim.x / 32) ? warp_sums[lane] : 0.0;
        for (int offset = 16; offset > 0; offset /= 2) acc += __shfl_down_sync(0xffffffffu, acc, offset);
        if (lane == 0) partial[blockIdx.x] = acc;
    }
}

__global__ void sum_partials_kernel(const double* __restrict__ partial, int count, double* __restrict__ out) {
    // One warp: lanes take fixed strided slices, then a fixed shuffle tree.
    double acc = 0.0;
    for (int i = threadIdx.x; i < count; i += 32) acc += partial[i];
    for (int offset = 16; offset > 0; offset /= 2) acc += __shfl_down_sync(0xffffffffu, acc, offset);
    if (threadIdx.x == 0) *out = acc;
}
