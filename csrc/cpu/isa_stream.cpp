// Streaming loops that reproduce a kernel's memory traffic without its arithmetic: the memory
// bandwidth limit a kernel with that access pattern can reach, measured by the benchmark.
// Compiled once per ISA level, like the optimizer drivers, and split over threads the same way.
#include <array>
#include <atomic>
#include <cstdint>
#include <stdexcept>
#include <utility>

#include "kernels.h"
#include "parallel.h"

namespace fastopt::cpu::FASTOPT_ISA_NS {
namespace {

// Array roles, in this order in `arrays`: `RO` read only, `RW` read and written in place (an
// optimizer's param and state), `WO` written only (a BatchNorm output).
constexpr int kMaxReadOnly = 2, kMaxReadWrite = 6, kMaxWriteOnly = 2;

template <class T, int RO, int RW, int WO>
double stream_typed(void* const* arrays, int64_t n, int requested_threads) {
    T* a[RO + RW + WO + 1];
    for (int k = 0; k < RO + RW + WO; ++k) a[k] = static_cast<T*>(arrays[k]);
    // The average of what was read: arrays filled with one value keep it, so repeated passes
    // never drift into denormals or infinities.
    const T scale = T(1) / T(RO + RW > 0 ? RO + RW : 1);
    std::atomic<double> total{0.0};
    parallel_ranges(n, requested_threads, [&](int64_t lo, int64_t hi) {
        // Local copies: a store through a T* could otherwise alias the captured scale, which
        // forces a reload per element and keeps the loop scalar.
        T* local[RO + RW + WO + 1];
        for (int k = 0; k < RO + RW + WO; ++k) local[k] = a[k];
        const T local_scale = scale;
        T acc = T(0);
#pragma omp simd reduction(+ : acc)
        for (int64_t i = lo; i < hi; ++i) {
            T s = T(0);
            for (int k = 0; k < RO + RW; ++k) s += local[k][i];
            s *= local_scale;
            for (int k = RO; k < RO + RW + WO; ++k) local[k][i] = s;
            acc += s;
        }
        // A read-only pass must produce something, or the loads are dead code.
        for (double seen = total.load(); !total.compare_exchange_weak(seen, seen + double(acc));) {
        }
    });
    return total.load();
}

using StreamFn = double (*)(void* const*, int64_t, int);
constexpr int kNumPatterns = (kMaxReadOnly + 1) * (kMaxReadWrite + 1) * (kMaxWriteOnly + 1);

template <class T, int... I>
constexpr std::array<StreamFn, sizeof...(I)> make_table(std::integer_sequence<int, I...>) {
    return {&stream_typed<T, I / ((kMaxReadWrite + 1) * (kMaxWriteOnly + 1)),
                          (I / (kMaxWriteOnly + 1)) % (kMaxReadWrite + 1), I % (kMaxWriteOnly + 1)>...};
}

constexpr auto kFloat32Table = make_table<float>(std::make_integer_sequence<int, kNumPatterns>{});
constexpr auto kFloat64Table = make_table<double>(std::make_integer_sequence<int, kNumPatterns>{});

}  // namespace

// One pass over n elements of each array; returns the sum of the values written (or read, when
// nothing is written) so that no load can be optimised away.
double stream_pass(int dtype, void* const* arrays, int read_only, int read_write, int write_only,
                   int64_t n, int num_threads) {
    if (read_only < 0 || read_only > kMaxReadOnly || read_write < 0 || read_write > kMaxReadWrite ||
        write_only < 0 || write_only > kMaxWriteOnly)
        throw std::invalid_argument("stream pattern out of range");
    int index = (read_only * (kMaxReadWrite + 1) + read_write) * (kMaxWriteOnly + 1) + write_only;
    if (dtype == kFloat32) return kFloat32Table[index](arrays, n, num_threads);
    if (dtype == kFloat64) return kFloat64Table[index](arrays, n, num_threads);
    throw std::invalid_argument("stream_pass takes float32 or float64 arrays");
}

}  // namespace fastopt::cpu::FASTOPT_ISA_NS
