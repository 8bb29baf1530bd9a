// BatchNorm's per-channel reductions, for the per-ISA driver (isa_batchnorm.cpp only: it opens
// that file's ISA namespace, so each ISA level gets its own copy).
#pragma once
#include "fastopt/math/batchnorm.h"
#include "batchnorm.h"
#include "parallel.h"

#include <cstdint>
#include <cstdlib>
#include <type_traits>

namespace fastopt::cpu::FASTOPT_ISA_NS {
namespace {

inline int64_t min_i64(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t max_i64(int64_t a, int64_t b) { return a > b ? a : b; }

// A zeroed scratch array. calloc rather than new[]: nothing here may throw, so the per-ISA objects
// need no unwinding tables (whose personality reference would be a weak symbol shared across
// ISA levels). Callers check `data` for allocation failure.
template <class T>
struct Buffer {
    T* data;
    explicit Buffer(int64_t n) : data(static_cast<T*>(std::calloc(size_t(n > 0 ? n : 1), sizeof(T)))) {}
    ~Buffer() { std::free(data); }
    Buffer(const Buffer&) = delete;
    Buffer& operator=(const Buffer&) = delete;
    T& operator[](int64_t i) { return data[i]; }
};

// kLanes, the lane count of the channels-first sums, and kLineBytes: fastopt/math/bn_blocks.h.

inline double lane_total(double* lane) {
    for (int width = kLanes / 2; width >= 1; width /= 2)
        for (int j = 0; j < width; ++j) lane[j] += lane[j + width];
    return lane[0];
}

// The two reductions: operator() accumulates element k of channel c into lane sums a, b;
// prefetch(k) asks for the cache lines holding element k of each input.
template <class X>
struct ShiftedSums {  // forward: d = x - shift (the channel's first value); sums of d and d * d
    static constexpr int64_t kBytes = int64_t(sizeof(X)), kInputs = 1;
    const X* __restrict__ x;
    const double* __restrict__ shift;
    void operator()(int64_t k, int64_t c, double& a, double& b) const {
        double d = load_as<double>(x[k]) - shift[c];
        a += d;
        b += d * d;
    }
    void prefetch(int64_t k) const { __builtin_prefetch(x + k); }
};

template <class X>
struct GradSums {  // backward: sums of dy and dy * (x - mean)
    static constexpr int64_t kBytes = int64_t(sizeof(X)), kInputs = 2;
    const X* __restrict__ dy;
    const X* __restrict__ x;
    const double* __restrict__ mean;
    void operator()(int64_t k, int64_t c, double& a, double& b) const {
        double g = load_as<double>(dy[k]);
        a += g;
        b += g * (load_as<double>(x[k]) - mean[c]);
    }
    void prefetch(int64_t k) const {
        __builtin_prefetch(dy + k);
        __builtin_prefetch(x + k);
    }
};

// Bit operations on a float's representation, so that loops over mask bytes vectorise (GCC made
// comparisons of the bytes into branches, which kept those loops scalar).
template <class C>
using BitsOf = std::conditional_t<sizeof(C) == 8, uint64_t, uint32_t>;
template <class C>
inline BitsOf<C> bits_of(C v) {
    BitsOf<C> u;
    __builtin_memcpy(&u, &v, sizeof u);
    return u;
}

// The gradient through a ReLU at element j, recovered from its output y (bn_relu_grad) or from
// the mask its forward wrote (1 where y > 0): dy where it passed, +0 elsewhere, the same bits.
template <class C>
inline C relu_grad_at(C dy, const uint8_t* mask, int64_t j) {
    const BitsOf<C> keep = BitsOf<C>(0) - BitsOf<C>(mask[j] != 0);
    const BitsOf<C> u = bits_of(dy) & keep;
    C out;
    __builtin_memcpy(&out, &u, sizeof out);
    return out;
}
template <class C, class X>
inline C relu_grad_at(C dy, const X* y, int64_t j) { return bn_relu_grad<C>(dy, load_as<C>(y[j])); }

// 1 where v > 0 (+inf included; not a NaN, a zero or a negative value): 0 < bits <= +inf's.
template <class C>
inline uint8_t positive_byte(C v) {
    const BitsOf<C> inf = sizeof(C) == 8 ? BitsOf<C>(0x7ff0000000000000ull) : BitsOf<C>(0x7f800000u);
    return uint8_t(bits_of(v) - 1 < inf);
}

template <class X, class Y>
struct MaskedGradSums {  // backward through a ReLU: GradSums of dy * (y > 0), Y: y's type or uint8_t (a mask)
    static constexpr int64_t kBytes = int64_t(sizeof(X)), kInputs = 3;
    const X* __restrict__ dy;
    const X* __restrict__ x;
    const Y* __restrict__ y;
    const double* __restrict__ mean;
    void operator()(int64_t k, int64_t c, double& a, double& b) const {
        double g = relu_grad_at<double>(load_as<double>(dy[k]), y, k);
        a += g;
        b += g * (load_as<double>(x[k]) - mean[c]);
    }
    void prefetch(int64_t k) const {
        __builtin_prefetch(dy + k);
        __builtin_prefetch(x + k);
        __builtin_prefetch(y + k);
    }
};

template <bool kMask, class X, class Y>
inline auto make_grad_sums(const X* dy, const X* x, const Y* y, const double* mean) {
    if constexpr (kMask) return MaskedGradSums<X, Y>{dy, x, y, mean};
    else return GradSums<X>{dy, x, mean};
}

// Channels-first layouts (inner > 1). Each channel's M = outer * inner elements, in (o, i) order, are cut
// into blocks of kBnBlock, and blocks into segments (the part of one row of `inner` values that
// lies in the block). add(k, c, a, b) accumulates element k of channel c into lane sums a, b;
// a segment's element j goes to lane j % kLanes (the tail, after the last full kLanes, to lane
// j - full). A block's two sums are its lanes' totals; a channel's sums are its block sums added
// in block order. segment_sums and block_sums are two spellings of that order (block_sums keeps
// the lanes in registers across a block's segments).
template <class Add>
inline void segment_sums(int64_t base, int64_t len, int64_t c, Add& add, double* lane_state1,
                         double* lane_state2) {
    double lane1[kLanes], lane2[kLanes];  // locals, so that the compiler keeps them in registers
    for (int j = 0; j < kLanes; ++j) {
        lane1[j] = lane_state1[j];
        lane2[j] = lane_state2[j];
    }
    const int64_t full = len / kLanes * kLanes;
    for (int64_t k = 0; k < full; k += kLanes)
#pragma omp simd
        for (int j = 0; j < kLanes; ++j) add(base + k + j, c, lane1[j], lane2[j]);
    for (int64_t k = full; k < len; ++k) add(base + k, c, lane1[k - full], lane2[k - full]);
    for (int j = 0; j < kLanes; ++j) {
        lane_state1[j] = lane1[j];
        lane_state2[j] = lane2[j];
    }
}

template <class Add>
inline void block_sums(int64_t channels, int64_t inner, int64_t count, int64_t c, int64_t b, Add& add,
                       double& sum1, double& sum2) {
    double lane1[kLanes] = {}, lane2[kLanes] = {};
    int64_t m = b * kBnBlock;
    const int64_t end = min_i64(count, m + kBnBlock);
    // A channel's rows are `channels * inner` values apart: rows too short for the hardware
    // prefetchers to follow are fetched about kBnPrefetchBytes (of all inputs) ahead.
    const int64_t row_bytes = inner * Add::kBytes * Add::kInputs;
    const bool short_rows = row_bytes < kBnShortRowBytes;
    const int64_t rows_ahead = max_i64(1, kBnPrefetchBytes / row_bytes);
    const int64_t outer = (count + inner - 1) / inner;
    while (m < end) {
        const int64_t o = m / inner, i = m - o * inner;
        const int64_t len = min_i64(end - m, inner - i);
        const int64_t base = (o * channels + c) * inner + i;
        if (short_rows && o + rows_ahead < outer) {
            const int64_t ahead = base + rows_ahead * channels * inner;
            for (int64_t k = 0; k < len; k += kLineBytes / Add::kBytes) add.prefetch(ahead + k);
            add.prefetch(ahead + len - 1);
        }
        const int64_t full = len / kLanes * kLanes;
        for (int64_t k = 0; k < full; k += kLanes)
#pragma omp simd
            for (int j = 0; j < kLanes; ++j) add(base + k + j, c, lane1[j], lane2[j]);
        for (int64_t k = full; k < len; ++k) add(base + k, c, lane1[k - full], lane2[k - full]);
        m += len;
    }
    sum1 = lane_total(lane1);
    sum2 = lane_total(lane2);
}

inline int64_t num_blocks_of(int64_t count) { return (count + kBnBlock - 1) / kBnBlock; }

// One channel's sums on the calling thread.
template <class Add>
inline void channel_sums(int64_t channels, int64_t inner, int64_t count, int64_t c, Add& add, double& total1,
                         double& total2) {
    double s1 = 0, s2 = 0;
    for (int64_t b = 0; b < num_blocks_of(count); ++b) {
        double p1, p2;
        block_sums(channels, inner, count, c, b, add, p1, p2);
        s1 += p1;
        s2 += p2;
    }
    total1 = s1;
    total2 = s2;
}

// The sums of channels [c0, c1). In a sweep, for each row o, the rows of all the group's
// channels lie next to each other in memory, so the sweep reads one long contiguous run per o
// (a single channel's rows of `inner` values, far apart, keep the prefetchers from streaming).
// Each channel's row is read whole, its segments (split where a block ends) in order: sweeping
// the group segment by segment instead cut each row into short runs, 30% slower.
// Per channel it adds the same segments in the same order as block_sums: the same bits.
// `lanes` holds 2 * kLanes zeroed doubles per channel of the group when it sweeps.
template <class Add>
inline void group_sums(int64_t outer, int64_t channels, int64_t inner, int64_t c0, int64_t c1, Add& add,
                       double* lanes, double* total1, double* total2) {
    const int64_t count = outer * inner;
    if (c1 - c0 == 1 || !sweeps_rows(inner, Add::kBytes)) {
        for (int64_t c = c0; c < c1; ++c) channel_sums(channels, inner, count, c, add, total1[c], total2[c]);
        return;
    }
    for (int64_t c = c0; c < c1; ++c) total1[c] = total2[c] = 0;
    for (int64_t o = 0; o < outer; ++o) {
        for (int64_t c = c0; c < c1; ++c) {
            double* lane = lanes + (c - c0) * 2 * kLanes;
            for (int64_t i = 0; i < inner;) {
                const int64_t m = o * inner + i;
                const int64_t block_end = min_i64(count, (m / kBnBlock + 1) * kBnBlock);
                const int64_t len = min_i64(inner - i, block_end - m);
                segment_sums((o * channels + c) * inner + i, len, c, add, lane, lane + kLanes);
                if (m + len == block_end) {
                    total1[c] += lane_total(lane);
                    total2[c] += lane_total(lane + kLanes);
                    for (int j = 0; j < 2 * kLanes; ++j) lane[j] = 0;
                }
                i += len;
            }
        }
    }
}

// Every channel's sums, the blocks spread over threads.
template <class Add>
bool reduce_strided(int64_t outer, int64_t channels, int64_t inner, int num_threads, double* total1,
                    double* total2, Add add) {
    const int64_t count = outer * inner;
    const int64_t num_blocks = num_blocks_of(count);
    const int64_t tasks = channels * num_blocks;
    Buffer<double> part1(tasks), part2(tasks);
    if (!part1.data || !part2.data) return false;
    const int nthreads = threads_for(count * channels, num_threads);
    parallel_tasks(tasks, nthreads, [&](int64_t t) {
        // Block-major: consecutive tasks read neighbouring rows (channel c + 1 follows channel c in
        // memory), which keeps the hardware prefetchers on long streams.
        const int64_t b = t / channels, c = t - b * channels;
        block_sums(channels, inner, count, c, b, add, part1.data[c * num_blocks + b],
                   part2.data[c * num_blocks + b]);
    });
    for (int64_t c = 0; c < channels; ++c) {
        double s1 = 0, s2 = 0;
        for (int64_t b = 0; b < num_blocks; ++b) {
            s1 += part1.data[c * num_blocks + b];
            s2 += part2.data[c * num_blocks + b];
        }
        total1[c] = s1;
        total2[c] = s2;
    }
    return true;
}

// Channels-last layouts: rows of `channels` values. Blocks of rows (and of channels,
// when there are many) accumulate one sum per channel, added row by row; block sums are then
// added in row-block order.
template <class Add>
bool reduce_rows(int64_t rows, int64_t channels, int num_threads, double* total1, double* total2, Add add) {
    const int64_t rows_per_block = max_i64(1, kBnRowBlockElems / channels);
    const int64_t row_blocks = (rows + rows_per_block - 1) / rows_per_block;
    const int64_t channel_blocks = (channels + kBnChannelBlock - 1) / kBnChannelBlock;
    Buffer<double> part1(row_blocks * channels), part2(row_blocks * channels);
    if (!part1.data || !part2.data) return false;
    const int nthreads = threads_for(rows * channels, num_threads);
    parallel_tasks(row_blocks * channel_blocks, nthreads, [&](int64_t t) {
        const int64_t rb = t / channel_blocks, cb = t - rb * channel_blocks;
        const int64_t c0 = cb * kBnChannelBlock, c1 = min_i64(channels, c0 + kBnChannelBlock);
        double* __restrict__ s1 = part1.data + rb * channels;
        double* __restrict__ s2 = part2.data + rb * channels;
        const int64_t r1 = min_i64(rows, (rb + 1) * rows_per_block);
        int64_t r = rb * rows_per_block;
        // Four rows per visit of the sums: the same additions in the same order, with a quarter
        // of the loads and stores of the sums.
        for (; r + 4 <= r1; r += 4) {
            const int64_t row = r * channels;
#pragma omp simd
            for (int64_t c = c0; c < c1; ++c) {
                double a = s1[c], b = s2[c];
                add(row + c, c, a, b);
                add(row + channels + c, c, a, b);
                add(row + 2 * channels + c, c, a, b);
                add(row + 3 * channels + c, c, a, b);
                s1[c] = a;
                s2[c] = b;
            }
        }
        for (; r < r1; ++r) {
            const int64_t row = r * channels;
#pragma omp simd
            for (int64_t c = c0; c < c1; ++c) add(row + c, c, s1[c], s2[c]);
        }
    });
    for (int64_t c = 0; c < channels; ++c) total1[c] = total2[c] = 0;
    for (int64_t rb = 0; rb < row_blocks; ++rb) {
        const double* __restrict__ s1 = part1.data + rb * channels;
        const double* __restrict__ s2 = part2.data + rb * channels;
#pragma omp simd
        for (int64_t c = 0; c < channels; ++c) {
            total1[c] += s1[c];
            total2[c] += s2[c];
        }
    }
    return true;
}

template <class Add>
bool reduce(BnLayout layout, int64_t outer, int64_t channels, int64_t inner, int num_threads, double* total1,
            double* total2, Add add) {
    if (layout == BnLayout::kChannelsLast) return reduce_rows(outer, channels, num_threads, total1, total2, add);
    return reduce_strided(outer, channels, inner, num_threads, total1, total2, add);
}

}  // namespace
}  // namespace fastopt::cpu::FASTOPT_ISA_NS
