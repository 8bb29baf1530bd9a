// Block-wise quantized optimizer states (docs/quantized_states.md): the code search and the
// block scale, shared by the CPU and CUDA drivers. A block of kQuantBlock consecutive elements
// keeps one float32 absmax and one byte per element: s = values[code] * absmax.
#pragma once
#include "common.h"

#if defined(__CUDACC_RTC__)
typedef unsigned char uint8_t;
typedef int int32_t;
#endif

namespace fastopt {

constexpr int kQuantBlock = 256;

// The nearest-code lookup table (fastopt/blockwise.py builds it): bucket = the float's magnitude
// bits >> kLutShift (exponent and 7 mantissa bits) less kLutLow, clamped to [0, kLutBuckets);
// negative values use the second half. Each bucket holds at most one midpoint, so the code
// below the bucket plus one comparison gives the nearest code exactly.
constexpr int kLutShift = 16;
constexpr int kLutLow = 104 << 7;
constexpr int kLutBuckets = (127 << 7) - kLutLow + 1;

// A code map: values (256, ascending), mids (the 255 midpoints, then +inf; the kernels need only
// the lookup table, which carries them) and the lookup table (int32 entries, so that vector
// loops can gather them).
struct CodeTables {
    const float* values;
    const float* mids;
    const int32_t* lut;
};

// The code c with mids[c - 1] < x <= mids[c] (a tie goes to the lower code); NaN gives the code
// of its bucket, which is harmless: its block's absmax is NaN too.
// An entry is (code below the bucket) << 16 | the low 16 bits of the bucket's midpoint magnitude
// (xor 0xFFFF for negative buckets; 0xFFFF when the bucket holds no midpoint): within a bucket
// the other bits are x's, so x is above the midpoint exactly when its low 16 bits (likewise
// flipped for negative x) are greater. One table load per element. Branch-free, so that loops
// over it vectorise (the sign of a state is unpredictable).
FASTOPT_HD uint8_t encode_nearest(float x, const int32_t* lut) {
    const uint32_t u = float_to_bits(x);
    const uint32_t negative = u >> 31;
    int b = int((u & 0x7fffffffu) >> kLutShift) - kLutLow;
    b = b < 0 ? 0 : (b > kLutBuckets - 1 ? kLutBuckets - 1 : b);
    const uint32_t entry = uint32_t(lut[b + int(negative) * kLutBuckets]);
    const uint32_t low = (u ^ (0u - negative)) & 0xffffu;
    return uint8_t((entry >> 16) + (low > (entry & 0xffffu) ? 1u : 0u));
}

// The "fp8" scheme: E4M3 codes (4 exponent bits, bias 7, 3 mantissa bits, no infinity, largest
// finite 448) of s / scale, scale = absmax / 448 per block; decoding is a 256-entry table like
// the dynamic map's. Round to nearest even, saturating at +-448; NaN stays NaN (0x7f).
constexpr float kE4M3Max = 448.0f;

FASTOPT_HD uint8_t float_to_e4m3(float x) {
    const uint32_t u = float_to_bits(x);
    const uint32_t a = u & 0x7fffffffu;
    // Below 2^-6 (subnormal codes, steps of 2^-9): adding 2^14, whose ulp is 2^-9, rounds to
    // nearest even there; the low bits are the code (8 when it rounds up to the smallest normal).
    const uint32_t tiny = float_to_bits(bits_to_float(a) + 16384.0f) - 0x46800000u;
    // Normal codes: round the 20 dropped mantissa bits to nearest even, rebias 127 -> 7.
    const uint32_t normal = ((a + 0x7ffffu + ((a >> 20) & 1u)) >> 20) - (120u << 3);
    uint32_t code = a < 0x3c800000u ? tiny : normal;
    code = a >= 0x43e00000u ? 0x7eu : code;  // 448 and above (rounding may exceed it): 448
    code = a > 0x7f800000u ? 0x7fu : code;
    return uint8_t(code | ((u >> 24) & 0x80u));
}

// The value of an E4M3 code, from its bits (the same values as the decoding table, which the
// tests hold to ml_dtypes): no table lookup, so vector loops need no gather. Normal codes shift
// into float32 position and rebias 7 -> 127; subnormal ones are mantissa * 2^-9, exact.
FASTOPT_HD float e4m3_to_float(uint8_t code) {
    const uint32_t c = code;
    const uint32_t magnitude = c & 0x7fu;
    const float tiny = float(int(c & 7u)) * 0.001953125f;  // 2^-9
    const float normal = bits_to_float((magnitude << 20) + (120u << 23));
    const float value = magnitude < 8u ? tiny : normal;
    const float signed_value = bits_to_float(float_to_bits(value) | ((c & 0x80u) << 24));
    return magnitude == 0x7fu ? bits_to_float(0x7fc00000u | ((c & 0x80u) << 24)) : signed_value;
}

// The factor a block's codes are multiplied by: absmax itself, or absmax / 448 for fp8.
template <bool kFp8> FASTOPT_HD float block_scale(float absmax) { return kFp8 ? absmax / kE4M3Max : absmax; }

// max |s| of a block as integer bits: for floats the order of |x|'s bits is the order of |x|, and
// an integer max is associative, so the result (a NaN included) does not depend on the order.
FASTOPT_HD uint32_t abs_bits(float x) { return float_to_bits(x) & 0x7fffffffu; }

// The divisor of a block's values: a zero block keeps absmax 0 and divides by 1 (its codes are
// those of 0); a NaN absmax gives NaN values whatever the codes.
FASTOPT_HD float block_divisor(float scale) { return scale > 0.0f ? scale : 1.0f; }

}  // namespace fastopt
