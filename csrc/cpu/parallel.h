// Splitting index ranges over fastopt's worker threads (thread_pool.h).
#pragma once
#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "kernels.h"
#include "thread_pool.h"

namespace fastopt::cpu {

// Chunk boundaries fall on multiples of this many elements, so that no two threads write the same
// cache line (64 bytes hold at most 16 float32 elements; 64 covers every dtype and alignment
// of a 64-byte-aligned buffer).
constexpr int64_t kChunkAlign = 64;

// Pieces per thread of an element-wise loop: enough that a thread which starts late (its core was
// busy) finds work left, few enough that claiming them costs nothing measurable.
constexpr int64_t kPiecesPerThread = 8;

inline int threads_for(int64_t n, int requested) {
    if (n < kParallelThreshold || requested <= 1) return 1;
    int64_t useful = n / (kParallelThreshold / 2);
    return int(std::min<int64_t>(requested, std::max<int64_t>(1, useful)));
}

// Calls body(begin, end) on disjoint pieces of `grain` indices covering [0, n), spread over up to
// `nthreads` threads (the caller included); in any order, each piece exactly once.
template <class Body>
void parallel_for(int64_t n, int64_t grain, int nthreads, Body&& body) {
    using B = std::remove_reference_t<Body>;
    if (nthreads <= 1 || n <= grain) {
        if (n > 0) body(int64_t(0), n);
        return;
    }
    run_pieces(n, grain, nthreads, [](void* b, int64_t lo, int64_t hi) { (*static_cast<B*>(b))(lo, hi); },
               const_cast<void*>(static_cast<const void*>(&body)));
}

// Elements per piece of an element-wise loop over n elements on nthreads threads: a multiple of
// kChunkAlign, at least half the parallel threshold.
inline int64_t piece_size(int64_t n, int nthreads) {
    int64_t per_piece = (n + nthreads * kPiecesPerThread - 1) / (nthreads * kPiecesPerThread);
    per_piece = std::max<int64_t>(per_piece, kParallelThreshold / 2);
    return (per_piece + kChunkAlign - 1) / kChunkAlign * kChunkAlign;
}

// Calls body(lo, hi) on contiguous, aligned, disjoint ranges covering [0, n).
template <class Body>
void parallel_ranges(int64_t n, int requested_threads, Body&& body) {
    const int nthreads = threads_for(n, requested_threads);
    parallel_for(n, piece_size(n, nthreads), nthreads, body);
}

// Calls task(i) for every i in [0, count), spread over nthreads threads in contiguous runs of
// about count / (nthreads * kPiecesPerThread) tasks (neighbouring tasks read neighbouring memory).
template <class Task>
void parallel_tasks(int64_t count, int nthreads, Task&& task) {
    const int64_t grain = std::max<int64_t>(1, (count + nthreads * kPiecesPerThread - 1) / (nthreads * kPiecesPerThread));
    parallel_for(count, grain, nthreads, [&](int64_t lo, int64_t hi) {
        for (int64_t i = lo; i < hi; ++i) task(i);
    });
}

}  // namespace fastopt::cpu
