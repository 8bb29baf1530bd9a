// fastopt's own worker threads, shared by every CPU kernel (ISA-independent: thread_pool.cpp).
//
// A job is a range [0, n) cut into pieces of `grain` indices. The calling thread and the workers
// claim pieces one at a time from an atomic counter, so the caller never waits for a worker that
// has not started: when the other cores are busy it simply does every piece itself, and a call is
// never much slower than the serial loop. Idle workers spin for a few microseconds (enough to
// catch back-to-back calls), then sleep on a futex instead of burning a core that BLAS threads or
// other processes need.
#pragma once
#include <cstdint>

namespace fastopt::cpu {

using RangeFn = void (*)(void* context, int64_t begin, int64_t end);

// Calls fn(context, begin, end) once for each piece [k * grain, min(n, (k + 1) * grain)), on at
// most `max_threads` threads, the caller included; returns when every piece is done. A second
// job submitted while one runs (another Python thread, or a call from inside a piece) runs on
// its caller alone.
void run_pieces(int64_t n, int64_t grain, int max_threads, RangeFn fn, void* context);

// The CPUs this process may run on (its affinity mask).
int affinity_cpus();

// How long idle workers spin before they sleep, in microseconds (0: sleep at once).
int spin_microseconds();
void set_spin_microseconds(int us);

}  // namespace fastopt::cpu
