// Shared building blocks of the per-element math: host/device qualifiers, the few maths
// functions the rules use, and bit-exact half-precision conversions.
//
// Every header under fastopt/math compiles as host C++ (the threaded CPU drivers) and as CUDA device
// code (NVRTC, through CuPy). Nothing here may depend on the C++ standard library on the device
// side, so the maths functions go through the fo_* wrappers below.
#pragma once

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define FASTOPT_DEVICE_CODE 1
#define FASTOPT_HD __host__ __device__ __forceinline__
#else
#include <cmath>
#include <cstdint>
#define FASTOPT_HD inline __attribute__((always_inline))
#endif

#if defined(__CUDACC_RTC__)
// NVRTC has no <cstdint>.
typedef unsigned short uint16_t;
typedef unsigned int uint32_t;
typedef long long int64_t;
typedef unsigned long long uint64_t;
#endif

namespace fastopt {

// Storage types for the half formats. Arithmetic is never done in them: values are widened to
// float on load and rounded to nearest even on store, with the conversions below, which are
// written with integer and float32 operations only so that host and device round identically.
// Scoped enums rather than structs: they are scalars, so loops over them vectorise.
enum class bf16_t : uint16_t {};
enum class f16_t : uint16_t {};

FASTOPT_HD float bits_to_float(uint32_t u) {
#ifdef FASTOPT_DEVICE_CODE
    return __uint_as_float(u);
#else
    return __builtin_bit_cast(float, u);  // unlike memcpy, keeps the loop vectorisable
#endif
}

FASTOPT_HD uint32_t float_to_bits(float f) {
#ifdef FASTOPT_DEVICE_CODE
    return __float_as_uint(f);
#else
    return __builtin_bit_cast(uint32_t, f);
#endif
}

FASTOPT_HD float bf16_to_float(bf16_t h) { return bits_to_float(uint32_t(h) << 16); }

FASTOPT_HD bf16_t float_to_bf16(float f) {
    uint32_t u = float_to_bits(f);
    bool is_nan = (u & 0x7fffffffu) > 0x7f800000u;
    // Round to nearest, ties to even: add 0x7fff plus the lowest kept bit, then truncate.
    uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    // A NaN stays a (quiet) NaN with its sign; rounding could carry it into infinity.
    uint32_t nan = (u >> 16) | 0x0040u;
    return bf16_t(is_nan ? nan : rounded);
}

FASTOPT_HD float f16_to_float(f16_t h) {
    uint32_t bits = uint32_t(h);
    uint32_t sign = (bits & 0x8000u) << 16;
    uint32_t magnitude = bits & 0x7fffu;
    // Shifting exponent and mantissa into float position gives the value times 2^-112; one exact
    // multiplication rescales normals and subnormals alike.
    float scaled = bits_to_float(magnitude << 13) * 5.192296858534828e33f;  // 2^112
    uint32_t inf_or_nan = (magnitude << 13) | 0x7f800000u;
    uint32_t body = magnitude >= 0x7c00u ? inf_or_nan : float_to_bits(scaled);
    return bits_to_float(sign | body);
}

FASTOPT_HD f16_t float_to_f16(float f) {
    uint32_t u = float_to_bits(f);
    uint32_t sign = (u >> 16) & 0x8000u;
    uint32_t a = u & 0x7fffffffu;
    // Overflow (|f| >= 65520 rounds to infinity), infinity and NaN.
    uint32_t big = a > 0x7f800000u ? 0x7e00u : 0x7c00u;
    // Subnormal results: adding 0.5f aligns the mantissa so that the float adder rounds to
    // nearest even at the half's last subnormal bit; the low bits then hold the result.
    uint32_t tiny = float_to_bits(bits_to_float(a) + 0.5f) - 0x3f000000u;
    // Normal results: rebias the exponent and round the 13 dropped bits to nearest even.
    uint32_t odd = (a >> 13) & 1u;
    uint32_t normal = (a + 0xc8000fffu + odd) >> 13;  // 0xc8000000 = (15 - 127) << 23
    uint32_t body = a >= 0x477ff000u ? big : (a < 0x38800000u ? tiny : normal);
    return f16_t(sign | body);
}

// Stochastic rounding to bfloat16 (Gupta et al. 2015): adding 16 uniform random bits below the
// kept bits and truncating rounds the magnitude up with probability equal to its distance from
// the lower neighbour, so the rounding is unbiased. NaN stays a quiet NaN.
FASTOPT_HD bf16_t float_to_bf16_stochastic(float f, uint32_t random) {
    uint32_t u = float_to_bits(f);
    bool is_nan = (u & 0x7fffffffu) > 0x7f800000u;
    uint32_t rounded = (u + (random & 0xffffu)) >> 16;
    return bf16_t(is_nan ? ((u >> 16) | 0x0040u) : rounded);
}

// 32 random bits for element i of a step: a counter-based hash (Wellons' lowbias32) of the index
// and the step's seed, so every backend, ISA and thread split draws the same bits.
FASTOPT_HD uint32_t element_random(uint32_t seed, int64_t i) {
    uint32_t x = uint32_t(i) ^ seed;
    x += uint32_t(uint64_t(i) >> 32) * 0x9e3779b9u;
    x ^= x >> 16;
    x *= 0x7feb352du;
    x ^= x >> 15;
    x *= 0x846ca68bu;
    x ^= x >> 16;
    return x;
}

// Widening loads and rounding stores between a storage type S and the compute type C.
template <class C> FASTOPT_HD C load_as(float x) { return C(x); }
template <class C> FASTOPT_HD C load_as(double x) { return C(x); }
template <class C> FASTOPT_HD C load_as(bf16_t x) { return C(bf16_to_float(x)); }
template <class C> FASTOPT_HD C load_as(f16_t x) { return C(f16_to_float(x)); }

template <class S> struct Store;
template <> struct Store<float> { template <class C> FASTOPT_HD static float from(C x) { return float(x); } };
template <> struct Store<double> { template <class C> FASTOPT_HD static double from(C x) { return double(x); } };
template <> struct Store<bf16_t> { template <class C> FASTOPT_HD static bf16_t from(C x) { return float_to_bf16(float(x)); } };
template <> struct Store<f16_t> { template <class C> FASTOPT_HD static f16_t from(C x) { return float_to_f16(float(x)); } };

template <class S, class C> FASTOPT_HD S store_as(C x) { return Store<S>::from(x); }

// Maths used by the rules. sqrt and division are correctly rounded on every target (no fast-math,
// NVRTC's default --prec-sqrt/--prec-div), so results agree bit for bit across ISAs and backends.
#ifdef FASTOPT_DEVICE_CODE
FASTOPT_HD float fo_sqrt(float x) { return sqrtf(x); }
FASTOPT_HD double fo_sqrt(double x) { return sqrt(x); }
#else
FASTOPT_HD float fo_sqrt(float x) { return std::sqrt(x); }
FASTOPT_HD double fo_sqrt(double x) { return std::sqrt(x); }
#endif

// max that propagates a NaN in either argument (torch.maximum semantics), written as selects so
// that it vectorises.
template <class T> FASTOPT_HD T fo_max(T a, T b) { return (a != a || a > b) ? a : b; }
template <class T> FASTOPT_HD T fo_abs(T a) { return a < T(0) ? -a : a; }
// sign(x) in {-1, 0, 1}; NaN maps to NaN (torch.sign semantics).
template <class T> FASTOPT_HD T fo_sign(T a) { return a > T(0) ? T(1) : (a < T(0) ? T(-1) : a * T(0)); }

// The gradient as every rule sees it (docs/algorithms.md, shared prologue): sign for maximize, loss
// unscaling and the clip factor arrive folded into one scale; coupled L2 decay adds wd * p.
// The condition is a float comparison, not a bool flag: GCC fails to vectorise loops that mix
// 16- and 32-bit data with a select on an invariant bool. wd * p is skipped, not multiplied by
// zero, so an infinite p does not turn the gradient into NaN.
template <class T>
FASTOPT_HD T prologue_grad(T g, T p, T grad_scale, T weight_decay) {
    g = g * grad_scale;
    return weight_decay != T(0) ? g + weight_decay * p : g;
}

}  // namespace fastopt
