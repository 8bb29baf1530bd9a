// The worker threads behind run_pieces (see thread_pool.h for what they promise).
#include "thread_pool.h"

#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <climits>
#include <mutex>
#include <thread>

namespace fastopt::cpu {
namespace {

using Clock = std::chrono::steady_clock;

void futex_wait(std::atomic<uint32_t>& word, uint32_t expected) {
    syscall(SYS_futex, reinterpret_cast<uint32_t*>(&word), FUTEX_WAIT_PRIVATE, expected, nullptr, nullptr, 0);
}

void futex_wake_all(std::atomic<uint32_t>& word) {
    syscall(SYS_futex, reinterpret_cast<uint32_t*>(&word), FUTEX_WAKE_PRIVATE, INT_MAX, nullptr, nullptr, 0);
}

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    asm volatile("yield");
#endif
}

// 30 us: a Python loop's gap between two steps is a few microseconds, a training loop's is the
// forward and backward pass (milliseconds), during which a spinning worker would only take a core.
std::atomic<int> g_spin_us{30};

// Spins until done() holds or the spin budget is spent; returns done().
template <class Done>
bool spin_until(Done done) {
    const auto budget = std::chrono::microseconds(g_spin_us.load(std::memory_order_relaxed));
    const auto deadline = Clock::now() + budget;
    for (;;) {
        for (int i = 0; i < 32; ++i) {
            if (done()) return true;
            cpu_relax();
        }
        if (Clock::now() >= deadline) return done();
    }
}

class Pool {
public:
    void run(int64_t n, int64_t grain, int max_threads, RangeFn fn, void* context) {
        const int64_t pieces = (n + grain - 1) / grain;
        std::unique_lock<std::mutex> lock(submit_, std::try_to_lock);
        if (!lock.owns_lock() || pieces > int64_t(UINT32_MAX)) {
            fn(context, 0, n);
            return;
        }
        const int helpers = int(std::min<int64_t>(max_threads - 1, pieces - 1));
        start_workers(helpers);
        const uint32_t job = ++jobs_;
        fn_.store(fn, std::memory_order_relaxed);
        context_.store(context, std::memory_order_relaxed);
        n_.store(n, std::memory_order_relaxed);
        grain_.store(grain, std::memory_order_relaxed);
        pieces_.store(uint32_t(pieces), std::memory_order_relaxed);
        helpers_.store(helpers, std::memory_order_relaxed);
        finished_.store(0, std::memory_order_relaxed);
        claim_.store(uint64_t(job) << 32, std::memory_order_release);
        generation_.store(job, std::memory_order_seq_cst);
        if (sleepers_.load(std::memory_order_seq_cst) > 0) futex_wake_all(generation_);

        work(job);
        auto all_done = [&] { return finished_.load(std::memory_order_acquire) == uint32_t(pieces); };
        if (!spin_until(all_done)) {
            caller_sleeping_.store(1, std::memory_order_seq_cst);
            for (uint32_t f; (f = finished_.load(std::memory_order_seq_cst)) != uint32_t(pieces);)
                futex_wait(finished_, f);
            caller_sleeping_.store(0, std::memory_order_relaxed);
        }
    }

private:
    // Claims and runs pieces of `job` until none is left. The claim word packs the job number
    // (high half) with the next piece (low half), so a worker that wakes after its job ended
    // can never claim a piece of it, and the job's fields it read are used only after a claim
    // proves they still belong to that job.
    void work(uint32_t job) {
        uint64_t claim = claim_.load(std::memory_order_acquire);
        for (;;) {
            if (uint32_t(claim >> 32) != job) return;
            const uint32_t piece = uint32_t(claim);
            const uint32_t pieces = pieces_.load(std::memory_order_relaxed);
            if (piece >= pieces) return;
            RangeFn fn = fn_.load(std::memory_order_relaxed);
            void* context = context_.load(std::memory_order_relaxed);
            const int64_t n = n_.load(std::memory_order_relaxed), grain = grain_.load(std::memory_order_relaxed);
            if (!claim_.compare_exchange_weak(claim, claim + 1, std::memory_order_acq_rel,
                                              std::memory_order_acquire))
                continue;
            const int64_t begin = int64_t(piece) * grain;
            fn(context, begin, std::min(n, begin + grain));
            if (finished_.fetch_add(1, std::memory_order_seq_cst) + 1 == pieces &&
                caller_sleeping_.load(std::memory_order_seq_cst))
                futex_wake_all(finished_);
            claim = claim_.load(std::memory_order_acquire);
        }
    }

    void worker(int index, uint32_t seen) {
        for (;;) {
            auto moved = [&] { return generation_.load(std::memory_order_acquire) != seen; };
            if (!spin_until(moved)) {
                sleepers_.fetch_add(1, std::memory_order_seq_cst);
                while (generation_.load(std::memory_order_seq_cst) == seen) futex_wait(generation_, seen);
                sleepers_.fetch_sub(1, std::memory_order_relaxed);
            }
            seen = generation_.load(std::memory_order_acquire);
            if (index < helpers_.load(std::memory_order_relaxed)) work(seen);
        }
    }

    // Workers are never joined: they sleep when idle and end with the process.
    void start_workers(int count) {
        for (; started_ < count; ++started_) {
            std::thread(&Pool::worker, this, started_, generation_.load()).detach();
        }
    }

    std::mutex submit_;  // one job at a time
    uint32_t jobs_ = 0;  // guarded by submit_
    int started_ = 0;    // guarded by submit_
    std::atomic<uint64_t> claim_{0};
    std::atomic<uint32_t> generation_{0};  // the latest job; idle workers sleep on it
    std::atomic<uint32_t> finished_{0};    // pieces done in the current job; the caller sleeps on it
    std::atomic<uint32_t> caller_sleeping_{0};
    std::atomic<int> sleepers_{0};
    std::atomic<RangeFn> fn_{nullptr};
    std::atomic<void*> context_{nullptr};
    std::atomic<int64_t> n_{0}, grain_{1};
    std::atomic<uint32_t> pieces_{0};
    std::atomic<int> helpers_{0};
};

// Never freed: detached workers use it until the process ends. A forked child has none of the
// parent's workers, so it starts a pool of its own.
Pool* g_pool = nullptr;
std::once_flag g_pool_once;

Pool& pool() {
    std::call_once(g_pool_once, [] {
        g_pool = new Pool();
        pthread_atfork(nullptr, nullptr, [] { g_pool = new Pool(); });
    });
    return *g_pool;
}

}  // namespace

void run_pieces(int64_t n, int64_t grain, int max_threads, RangeFn fn, void* context) {
    if (n <= 0) return;
    if (grain < 1) grain = 1;
    if (max_threads <= 1 || n <= grain) {
        fn(context, 0, n);
        return;
    }
    pool().run(n, grain, max_threads, fn, context);
}

int affinity_cpus() {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
    return std::max(1u, std::thread::hardware_concurrency());
}

int spin_microseconds() { return g_spin_us.load(); }
void set_spin_microseconds(int us) { g_spin_us.store(std::max(0, us)); }

}  // namespace fastopt::cpu
