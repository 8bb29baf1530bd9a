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

// A code map: values (256, ascending), mids (the 255 midpoints, then +inf) and the lookup table
// (int32 entries, so that vector loops can gather them).
struct CodeTables {
    const float* values;
    const float* mids;
    const int32_t* lut;
};

// The code c with mids[c - 1] < x <= mids[c] (a tie goes to the lower code); NaN gives the code
// of its bucket, which is harmless: its block's absmax is NaN too.
// Branch-free, so that loops over it vectorise (the sign of a state is unpredictable).
FASTOPT_HD uint8_t encode_nearest(float x, const float* mids, const int32_t* lut) {
    uint32_t u = float_to_bits(x);
    int b = int((u & 0x7fffffffu) >> kLutShift) - kLutLow;
    b = b < 0 ? 0 : (b > kLutBuckets - 1 ? kLutBuckets - 1 : b);
    int c = lut[b + int(u >> 31) * kLutBuckets];
    return uint8_t(c + (x > mids[c] ? 1 : 0));
}

// max |s| of a block as integer bits: for floats the order of |x|'s bits is the order of |x|, and
// an integer max is associative, so the result (a NaN included) does not depend on the order.
FASTOPT_HD uint32_t abs_bits(float x) { return float_to_bits(x) & 0x7fffffffu; }

// The divisor of a block's values: a zero block keeps absmax 0 and divides by 1 (its codes are
// those of 0); a NaN absmax gives NaN values whatever the codes.
FASTOPT_HD float block_divisor(float absmax) { return absmax > 0.0f ? absmax : 1.0f; }

}  // namespace fastopt
