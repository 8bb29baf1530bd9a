// BatchNorm's output writer (plain or streaming stores), for the per-ISA driver
// (isa_batchnorm.cpp only: it opens that file's ISA namespace).
#pragma once
#include "bn_reduce.h"

#include <cstdint>
#if defined(__SSE2__)
#include <immintrin.h>
#endif

namespace fastopt::cpu::FASTOPT_ISA_NS {
namespace {

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
// belongs to one channel (channels-first) or one row starting at channel c (channels-last), in
// order; `writer` writes `out` from element k on. Ranges are split over threads on aligned boundaries.
template <class X, class Row>
void for_each_run(X* out, bool stream, BnLayout layout, int64_t outer, int64_t channels, int64_t inner,
                  int num_threads, Row row) {
    const int64_t n = outer * channels * inner;
    parallel_ranges(n, num_threads, [&](int64_t lo, int64_t hi) {
        OutputWriter<X> writer(out, lo, stream);
        int64_t k = lo;
        while (k < hi) {
            if (layout == BnLayout::kChannelsLast) {
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

}  // namespace
}  // namespace fastopt::cpu::FASTOPT_ISA_NS
