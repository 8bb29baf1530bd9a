// BatchNorm forward and backward on the CPU, compiled once per ISA level (FASTOPT_ISA_NS).
//
// Each call makes at most two passes over the data: a per-channel reduction (statistics in the
// forward, sum(dy) and sum(dy * (x - mean)) in the backward) and an element-wise pass that
// writes y or dx. Reductions run over fixed blocks whose partial sums are combined in a fixed
// order, so results are bitwise the same for every thread count and ISA level.
#include "fastopt/math/batchnorm.h"
#include "batchnorm.h"
#include "parallel.h"

#include <cstdint>
#include <cstdlib>
#if defined(__SSE2__)
#include <immintrin.h>
#endif

#if !defined(FASTOPT_ISA_NS)
#error "compile with -DFASTOPT_ISA_NS=<namespace>"
#endif

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

// Axis-1 reductions keep kLanes independent float64 sums (enough independent additions to hide
// their latency; fewer lanes ran 3-5x slower) and add them in a fixed tree at the end: the same
// bits whatever vector width the compiler picks.
constexpr int kLanes = 32;
constexpr int64_t kLineBytes = 64;

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

// Axis-1 layouts (inner > 1). Each channel's M = outer * inner elements, in (o, i) order, are cut
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

// Channels-last layouts (inner == 1): rows of `channels` values. Blocks of rows (and of channels,
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
bool reduce(int64_t outer, int64_t channels, int64_t inner, int num_threads, double* total1, double* total2,
            Add add) {
    if (inner == 1) return reduce_rows(outer, channels, num_threads, total1, total2, add);
    return reduce_strided(outer, channels, inner, num_threads, total1, total2, add);
}

// Streaming (non-temporal) stores write whole cache lines without first reading them from memory,
// which a plain store does (a third of a streaming pass's traffic). Used for outputs too big to be
// read back from cache anyway (kBnStreamingStoreBytes); the values stored are the same.
inline void stream_line(void* dst, const void* src) {
#if defined(__AVX512F__)
    _mm512_stream_si512(static_cast<__m512i*>(dst), _mm512_loadu_si512(src));
#elif defined(__AVX__)
    for (int q = 0; q < 2; ++q)
        _mm256_stream_si256(static_cast<__m256i*>(dst) + q, _mm256_loadu_si256(static_cast<const __m256i*>(src) + q));
#elif defined(__SSE2__)
    for (int q = 0; q < 4; ++q)
        _mm_stream_si128(static_cast<__m128i*>(dst) + q, _mm_loadu_si128(static_cast<const __m128i*>(src) + q));
#else
    __builtin_memcpy(dst, src, kLineBytes);
#endif
}

// Orders a thread's streaming stores before whatever it does next (they bypass the usual ordering).
inline void stream_fence() {
#if defined(__SSE2__)
    _mm_sfence();
#endif
}

// Writes an output array front to back, from consecutive runs of values (one per channel row).
// With streaming stores, whole cache lines are streamed: a line that one run leaves unfinished is
// completed by the next run and streamed then, so that rows of a length that is not a multiple of
// a line (14 x 14 floats) stream too. Storing each run's partial lines plainly, between streamed
// ones, halved the write rate there. The partial lines at the two ends of what one writer covers
// are stored plainly.
template <class X>
class OutputWriter {
public:
    OutputWriter(X* out, int64_t begin, bool stream) : out_(out), next_(begin) {
        const int64_t offset = int64_t(reinterpret_cast<uintptr_t>(out + begin) % kLineBytes);
        // Values not aligned to their size never fill a line: plain stores throughout.
        stream_ = stream && reinterpret_cast<uintptr_t>(out) % sizeof(X) == 0;
        head_ = !stream_ || offset == 0 ? 0 : (kLineBytes - offset) / int64_t(sizeof(X));
    }
    OutputWriter(const OutputWriter&) = delete;
    OutputWriter& operator=(const OutputWriter&) = delete;

    // The next len values are value(0), ..., value(len - 1).
    template <class Value>
    void append(int64_t len, Value value) {
        int64_t j = 0;
        if (!stream_ || head_ > 0) {  // plain stores: all of them, or those before the first line
            const int64_t n = stream_ ? min_i64(len, head_) : len;
            X* __restrict__ dst = out_ + next_;
#pragma omp simd
            for (int64_t q = 0; q < n; ++q) dst[q] = value(q);
            if (stream_) head_ -= n;
            next_ += n;
            j = n;
        }
        if (pending_ > 0 && j < len) {  // complete the line the previous run left
            const int64_t n = min_i64(len - j, kPerLine - pending_);
            for (int64_t q = 0; q < n; ++q) line_[pending_ + q] = value(j + q);
            pending_ += n;
            next_ += n;
            j += n;
            if (pending_ == kPerLine) {
                stream_line(out_ + next_ - kPerLine, line_);
                pending_ = 0;
            }
        }
        for (; len - j >= kPerLine; j += kPerLine, next_ += kPerLine) {
            alignas(kLineBytes) X line[kPerLine];
#pragma omp simd
            for (int64_t q = 0; q < kPerLine; ++q) line[q] = value(j + q);
            stream_line(out_ + next_, line);
        }
        if (j < len) {  // the start of a line: kept for the next run
            for (int64_t q = 0; q < len - j; ++q) line_[q] = value(j + q);
            pending_ = len - j;
            next_ += pending_;
        }
    }

    // Stores a line left unfinished; the writer is done.
    void finish() {
        for (int64_t q = 0; q < pending_; ++q) out_[next_ - pending_ + q] = line_[q];
        pending_ = 0;
    }

private:
    static constexpr int64_t kPerLine = kLineBytes / int64_t(sizeof(X));
    X* out_;
    int64_t next_;         // the index in out_ of the next value
    int64_t head_ = 0;     // values still to store plainly before the first line boundary
    int64_t pending_ = 0;  // values in line_, which belong at out_[next_ - pending_, next_)
    bool stream_;
    alignas(kLineBytes) X line_[kPerLine];
};

// Not for half types: their software rounding does not vectorise into the line buffer.
template <class X>
inline bool use_streaming_stores(int64_t n) {
    return sizeof(X) >= 4 && n * int64_t(sizeof(X)) >= kBnStreamingStoreBytes;
}

// Calls row(writer, k, len, c) for every run of elements [k, k + len) of the flat range that
// belongs to one channel (axis 1) or one row starting at channel c (channels-last), in order;
// `writer` writes `out` from element k on. Ranges are split over threads on aligned boundaries.
template <class X, class Row>
void for_each_run(X* out, bool stream, int64_t outer, int64_t channels, int64_t inner, int num_threads, Row row) {
    const int64_t n = outer * channels * inner;
    parallel_ranges(n, num_threads, [&](int64_t lo, int64_t hi) {
        OutputWriter<X> writer(out, lo, stream);
        int64_t k = lo;
        while (k < hi) {
            if (inner == 1) {
                const int64_t c = k % channels;
                const int64_t end = min_i64(hi, k - c + channels);
                row(writer, k, end - k, c);
                k = end;
            } else {
                const int64_t r = k / inner;
                const int64_t end = min_i64(hi, (r + 1) * inner);
                row(writer, k, end - k, r % channels);
                k = end;
            }
        }
        writer.finish();
        stream_fence();
    });
}

template <class X, class S>
bool forward_typed(const BnForwardCall& call) {
    using C = S;  // compute type: float32 for float32 and half data, float64 for float64
    const X* __restrict__ x = static_cast<const X*>(call.x);
    X* __restrict__ y = static_cast<X*>(call.y);
    const int64_t channels = call.channels, inner = call.inner, outer = call.outer;
    const S* weight = static_cast<const S*>(call.weight);
    const S* bias = static_cast<const S*>(call.bias);
    S* running_mean = static_cast<S*>(call.running_mean);
    S* running_var = static_cast<S*>(call.running_var);
    S* save_mean = static_cast<S*>(call.save_mean);
    S* save_invstd = static_cast<S*>(call.save_invstd);
    // Allocated first, so that a failure leaves the running statistics untouched.
    Buffer<C> mean(channels), scale(channels), shift_out(channels);
    if (!mean.data || !scale.data || !shift_out.data) return false;

    const int64_t count = outer * inner;
    // Per channel: statistics, running statistics and the normalization's constants.
    auto finalize = [&](int64_t c, double shift, double sum1, double sum2) {
        BnMoments mo = bn_moments(double(count), sum1, sum2);
        double batch_mean = shift + mo.mean;
        save_mean[c] = S(batch_mean);
        save_invstd[c] = S(bn_invstd(mo.var, call.eps));
        if (running_mean != nullptr) {
            running_mean[c] = S(bn_running_update(double(running_mean[c]), batch_mean, call.momentum));
            double unbiased = mo.var * (double(count) / double(count - 1));
            running_var[c] = S(bn_running_update(double(running_var[c]), unbiased, call.momentum));
        }
    };
    auto constants = [&](int64_t c) {
        mean[c] = C(save_mean[c]);
        scale[c] = (weight != nullptr ? C(weight[c]) : C(1)) * C(save_invstd[c]);
        shift_out[c] = bias != nullptr ? C(bias[c]) : C(0);
    };

    const int nthreads = threads_for(count * channels, call.num_threads);
    const bool sweeps = sweeps_rows(inner, int64_t(sizeof(X)));
    const ChannelGroups groups = fused_groups(outer, channels, inner, int64_t(sizeof(X)), sweeps, nthreads);
    const bool stream = use_streaming_stores<X>(count * channels);
    if (call.training && groups.count > 0) {
        // Lane sums only for sweeps of several channels (group_sums), so that this scratch stays small.
        Buffer<double> shift(channels), sum1(channels), sum2(channels);
        const bool keeps_lanes = sweeps && groups.count < channels;
        Buffer<double> lanes(keeps_lanes ? channels * 2 * kLanes : 1);
        if (!shift.data || !sum1.data || !sum2.data || !lanes.data) return false;
        for (int64_t c = 0; c < channels; ++c) shift[c] = load_as<double>(x[c * inner]);
        const double* __restrict__ sh = shift.data;
        ShiftedSums<X> add{x, sh};
        parallel_tasks(groups.count, nthreads, [&](int64_t g) {
            const int64_t c0 = groups.begin(g), c1 = groups.begin(g + 1);
            double* group_lanes = keeps_lanes ? lanes.data + c0 * 2 * kLanes : lanes.data;
            group_sums(outer, channels, inner, c0, c1, add, group_lanes, sum1.data, sum2.data);
            for (int64_t c = c0; c < c1; ++c) {
                finalize(c, shift[c], sum1[c], sum2[c]);
                constants(c);
            }
            for (int64_t o = 0; o < outer; ++o) {
                OutputWriter<X> writer(y, (o * channels + c0) * inner, stream);
                for (int64_t c = c0; c < c1; ++c) {
                    const X* __restrict__ xs = x + (o * channels + c) * inner;
                    const C mc = mean[c], sc = scale[c], bc = shift_out[c];
                    writer.append(inner, [=](int64_t j) __attribute__((always_inline)) {
                        return store_as<X>(bn_normalize<C>(load_as<C>(xs[j]), mc, sc, bc));
                    });
                }
                writer.finish();
            }
            stream_fence();
        });
        return true;
    }

    if (call.training) {
        Buffer<double> shift(channels), sum1(channels), sum2(channels);
        if (!shift.data || !sum1.data || !sum2.data) return false;
        for (int64_t c = 0; c < channels; ++c) shift[c] = load_as<double>(x[c * inner]);
        const double* __restrict__ sh = shift.data;
        bool reduced = reduce(outer, channels, inner, call.num_threads, sum1.data, sum2.data, ShiftedSums<X>{x, sh});
        if (!reduced) return false;
        for (int64_t c = 0; c < channels; ++c) finalize(c, shift[c], sum1[c], sum2[c]);
    } else {
        for (int64_t c = 0; c < channels; ++c) {
            save_mean[c] = running_mean[c];
            save_invstd[c] = S(bn_invstd(double(running_var[c]), call.eps));
        }
    }
    for (int64_t c = 0; c < channels; ++c) constants(c);

    const C* __restrict__ m = mean.data;
    const C* __restrict__ s = scale.data;
    const C* __restrict__ b = shift_out.data;
    for_each_run(y, stream, outer, channels, inner, call.num_threads,
                 [&](OutputWriter<X>& writer, int64_t k, int64_t len, int64_t c) {
        const X* __restrict__ xs = x + k;
        if (inner == 1) {
            const C* __restrict__ mc = m + c;
            const C* __restrict__ sc = s + c;
            const C* __restrict__ bc = b + c;
            writer.append(len, [=](int64_t j) __attribute__((always_inline)) {
                return store_as<X>(bn_normalize<C>(load_as<C>(xs[j]), mc[j], sc[j], bc[j]));
            });
        } else {
            const C mc = m[c], sc = s[c], bc = b[c];
            writer.append(len, [=](int64_t j) __attribute__((always_inline)) {
                return store_as<X>(bn_normalize<C>(load_as<C>(xs[j]), mc, sc, bc));
            });
        }
    });
    return true;
}

template <class X, class S>
bool backward_typed(const BnBackwardCall& call) {
    using C = S;
    const X* __restrict__ dy = static_cast<const X*>(call.dy);
    const X* __restrict__ x = static_cast<const X*>(call.x);
    X* __restrict__ dx = static_cast<X*>(call.dx);
    const int64_t channels = call.channels, inner = call.inner, outer = call.outer;
    const S* weight = static_cast<const S*>(call.weight);
    const S* save_mean = static_cast<const S*>(call.save_mean);
    const S* save_invstd = static_cast<const S*>(call.save_invstd);
    S* dweight = static_cast<S*>(call.dweight);
    S* dbias = static_cast<S*>(call.dbias);
    const int64_t count = outer * inner;

    Buffer<double> mean_wide(channels), sum_dy(channels), sum_dy_xmu(channels);
    Buffer<C> mean(channels), dy_coef(channels), x_coef(channels), offset(channels);
    if (!mean_wide.data || !sum_dy.data || !sum_dy_xmu.data || !mean.data || !dy_coef.data || !x_coef.data ||
        !offset.data)
        return false;
    for (int64_t c = 0; c < channels; ++c) mean_wide[c] = double(save_mean[c]);
    // Per channel: parameter gradients and dx's coefficients from the two sums.
    auto finalize = [&](int64_t c, double s_dy, double s_dy_xmu) {
        double invstd = double(save_invstd[c]);
        double w = weight != nullptr ? double(weight[c]) : 1.0;
        BnGradCoefs k = bn_grad_coefs(w, invstd, double(count), s_dy, s_dy_xmu, call.training);
        mean[c] = C(save_mean[c]);
        dy_coef[c] = C(k.dy_coef);
        x_coef[c] = C(k.x_coef);
        offset[c] = C(k.offset);
        if (dweight != nullptr) {
            dweight[c] = S(s_dy_xmu * invstd);
            dbias[c] = S(s_dy);
        }
    };
    const bool needs_sums = call.training || dweight != nullptr;
    const int nthreads = threads_for(count * channels, call.num_threads);
    const bool sweeps = sweeps_rows(inner, int64_t(sizeof(X)));
    const ChannelGroups groups = fused_groups(outer, channels, inner, 2 * int64_t(sizeof(X)), sweeps, nthreads);
    const bool stream = use_streaming_stores<X>(count * channels);
    if (needs_sums && groups.count > 0) {
        const bool keeps_lanes = sweeps && groups.count < channels;  // as in the forward
        Buffer<double> lanes(keeps_lanes ? channels * 2 * kLanes : 1);
        if (!lanes.data) return false;
        const double* __restrict__ mw = mean_wide.data;
        GradSums<X> add{dy, x, mw};
        parallel_tasks(groups.count, nthreads, [&](int64_t g) {
            const int64_t c0 = groups.begin(g), c1 = groups.begin(g + 1);
            double* group_lanes = keeps_lanes ? lanes.data + c0 * 2 * kLanes : lanes.data;
            group_sums(outer, channels, inner, c0, c1, add, group_lanes, sum_dy.data,
                       sum_dy_xmu.data);
            for (int64_t c = c0; c < c1; ++c) finalize(c, sum_dy[c], sum_dy_xmu[c]);
            for (int64_t o = 0; o < outer; ++o) {
                OutputWriter<X> writer(dx, (o * channels + c0) * inner, stream);
                for (int64_t c = c0; c < c1; ++c) {
                    const int64_t base = (o * channels + c) * inner;
                    const X* __restrict__ dys = dy + base;
                    const X* __restrict__ xs = x + base;
                    const C mc = mean[c], ac = dy_coef[c], bc = x_coef[c], oc = offset[c];
                    writer.append(inner, [=](int64_t j) __attribute__((always_inline)) {
                        return store_as<X>(bn_input_grad<C>(load_as<C>(dys[j]), load_as<C>(xs[j]), mc, ac, bc, oc));
                    });
                }
                writer.finish();
            }
            stream_fence();
        });
        return true;
    }
    if (needs_sums) {
        const double* __restrict__ mw = mean_wide.data;
        bool reduced =
            reduce(outer, channels, inner, call.num_threads, sum_dy.data, sum_dy_xmu.data, GradSums<X>{dy, x, mw});
        if (!reduced) return false;
    }
    for (int64_t c = 0; c < channels; ++c) finalize(c, sum_dy[c], sum_dy_xmu[c]);
    const C* __restrict__ m = mean.data;
    const C* __restrict__ a = dy_coef.data;
    const C* __restrict__ b = x_coef.data;
    const C* __restrict__ o = offset.data;
    for_each_run(dx, stream, outer, channels, inner, call.num_threads,
                 [&](OutputWriter<X>& writer, int64_t k, int64_t len, int64_t c) {
        const X* __restrict__ dys = dy + k;
        const X* __restrict__ xs = x + k;
        if (inner == 1) {
            const C* __restrict__ mc = m + c;
            const C* __restrict__ ac = a + c;
            const C* __restrict__ bc = b + c;
            const C* __restrict__ oc = o + c;
            writer.append(len, [=](int64_t j) __attribute__((always_inline)) {
                return store_as<X>(bn_input_grad<C>(load_as<C>(dys[j]), load_as<C>(xs[j]), mc[j], ac[j], bc[j], oc[j]));
            });
        } else {
            const C mc = m[c], ac = a[c], bc = b[c], oc = o[c];
            writer.append(len, [=](int64_t j) __attribute__((always_inline)) {
                return store_as<X>(bn_input_grad<C>(load_as<C>(dys[j]), load_as<C>(xs[j]), mc, ac, bc, oc));
            });
        }
    });
    return true;
}

}  // namespace

bool batch_norm_forward(const BnForwardCall& call) {
    switch (call.dtype) {
        case kFloat32: return forward_typed<float, float>(call);
        case kFloat64: return forward_typed<double, double>(call);
        case kFloat16: return forward_typed<f16_t, float>(call);
        case kBFloat16: return forward_typed<bf16_t, float>(call);
    }
    return false;
}

bool batch_norm_backward(const BnBackwardCall& call) {
    switch (call.dtype) {
        case kFloat32: return backward_typed<float, float>(call);
        case kFloat64: return backward_typed<double, double>(call);
        case kFloat16: return backward_typed<f16_t, float>(call);
        case kBFloat16: return backward_typed<bf16_t, float>(call);
    }
    return false;
}

}  // namespace fastopt::cpu::FASTOPT_ISA_NS
