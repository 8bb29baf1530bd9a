// CUDA driver of the optimizer rules over block-wise quantized states (fastopt/math/blockwise.h):
// one thread block of kQuantBlock threads per quantization block (grid-stride over blocks),
// one element per thread. The element's states are dequantized, stepped by the same
// step_element as every other path, and requantized against the block's new absmax, a max of
// integer bits (order-free, so every grid gives the CPU's bits).
#include "fastopt/math/all.h"
#include "fastopt/math/blockwise.h"
#include "fastopt/math/ema.h"

// E: the EMA of the weights' storage type, averaged from the new param after the element's step
// (fastopt/math/ema.h), or fastopt::NoEma.
template <class Rule, int V, class P, class G, bool kStochastic, bool kFp8, class E>
__global__ void __launch_bounds__(256)
blockwise_step_kernel(P* __restrict__ param, const G* __restrict__ grad, float* __restrict__ master,
                      uint8_t* __restrict__ c0, float* __restrict__ a0, uint8_t* __restrict__ c1,
                      float* __restrict__ a1, uint8_t* __restrict__ c2, float* __restrict__ a2,
                      const float* v0, const float* m0, const int32_t* l0, const float* v1, const float* m1,
                      const int32_t* l1, const float* v2, const float* m2, const int32_t* l2, long long n,
                      double grad_scale, double weight_decay, double decay_factor, unsigned int rounding_seed,
                      double k0, double k1, double k2, double k3, double k4, double k5, double k6, double k7,
                      double k8, double k9, double k10, double k11, E* __restrict__ ema, double ema_weight) {
    using namespace fastopt;
    using T = typename EmaOf<E>::compute;
    constexpr bool has_master = is_half<P>::value && !kStochastic;
    const double host_scalars[12] = {k0, k1, k2, k3, k4, k5, k6, k7, k8, k9, k10, k11};
    const typename Rule::template Scalars<float> k(host_scalars);
    const Prologue<float> pro{float(grad_scale), float(weight_decay), float(decay_factor), rounding_seed};
    constexpr int num_states = Rule::num_states(V);
    uint8_t* codes[3] = {c0, c1, c2};
    float* absmax[3] = {a0, a1, a2};
    const CodeTables tables[3] = {{v0, m0, l0}, {v1, m1, l1}, {v2, m2, l2}};
    __shared__ uint32_t warp_max[3][kQuantBlock / 32];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const long long blocks = (n + kQuantBlock - 1) / kQuantBlock;
    for (long long b = blockIdx.x; b < blocks; b += gridDim.x) {
        const long long i = b * kQuantBlock + threadIdx.x;
        const bool live = i < n;
        float s[3] = {0.0f, 0.0f, 0.0f};
        if (live) {
#pragma unroll
            for (int j = 0; j < num_states; ++j) s[j] = tables[j].values[codes[j][i]] * block_scale<kFp8>(absmax[j][b]);
            // master is param's pointer when unused: step_element never reads it then.
            step_element<Rule, V, float, P, G, float, kStochastic>(0, param + i, grad + i, master + i, &s[0], &s[1],
                                                                   &s[2], pro, k, i);
            if constexpr (EmaOf<E>::present)
                ema_element<E, T>(ema, i, ema_source<T, has_master>(master, param, i), T(ema_weight));
        }
#pragma unroll
        for (int j = 0; j < num_states; ++j) {
            uint32_t top = live ? abs_bits(s[j]) : 0u;
            for (int offset = 16; offset > 0; offset /= 2) {
                uint32_t other = __shfl_xor_sync(0xffffffffu, top, offset);
                top = other > top ? other : top;
            }
            if (lane == 0) warp_max[j][warp] = top;
        }
        __syncthreads();
#pragma unroll
        for (int j = 0; j < num_states; ++j) {
            uint32_t top = 0u;
            for (int w = 0; w < kQuantBlock / 32; ++w) top = warp_max[j][w] > top ? warp_max[j][w] : top;
            const float amax = bits_to_float(top);
            const float d = block_divisor(block_scale<kFp8>(amax));
            if (live) codes[j][i] = kFp8 ? float_to_e4m3(s[j] / d) : encode_nearest(s[j] / d, tables[j].lut);
            if (threadIdx.x == 0) absmax[j][b] = amax;
        }
        __syncthreads();  // warp_max is reused by the next block
    }
}
