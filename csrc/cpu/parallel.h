// Splitting a flat index range over OpenMP threads.
#pragma once
#include <algorithm>
#include <cstdint>
#include <omp.h>

#include "kernels.h"

namespace fastopt::cpu {

// Chunk boundaries fall on multiples of this many elements, so that no two threads write the same
// cache line (64 bytes hold at most 16 float32 elements; 64 covers every dtype and alignment
// of a 64-byte-aligned buffer).
constexpr int64_t kChunkAlign = 64;

inline int threads_for(int64_t n, int requested) {
    if (n < kParallelThreshold || requested <= 1) return 1;
    int64_t useful = n / (kParallelThreshold / 2);
    return int(std::min<int64_t>(requested, std::max<int64_t>(1, useful)));
}

// Elements per thread: an even split rounded up to a multiple of kChunkAlign (64-bit throughout).
inline int64_t chunk_size(int64_t n, int nthreads) {
    int64_t per_thread = (n + nthreads - 1) / nthreads;
    return (per_thread + kChunkAlign - 1) / kChunkAlign * kChunkAlign;
}

// Calls body(lo, hi) on contiguous, aligned, disjoint ranges covering [0, n): one range per thread.
template <class Body>
void parallel_ranges(int64_t n, int requested_threads, Body&& body) {
    int nthreads = threads_for(n, requested_threads);
    if (nthreads == 1) {
        body(int64_t(0), n);
        return;
    }
    const int64_t per_thread = chunk_size(n, nthreads);
#pragma omp parallel num_threads(nthreads)
    {
        // The runtime may grant fewer threads than asked (OMP_THREAD_LIMIT, OMP_DYNAMIC, nesting):
        // each thread then takes several chunks, so every chunk is still done exactly once.
        for (int chunk = omp_get_thread_num(); chunk < nthreads; chunk += omp_get_num_threads()) {
            int64_t lo = std::min<int64_t>(n, int64_t(chunk) * per_thread);
            int64_t hi = std::min<int64_t>(n, lo + per_thread);
            if (lo < hi) body(lo, hi);
        }
    }
}

}  // namespace fastopt::cpu
