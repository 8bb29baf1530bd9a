// The emulator's scheduler: blocks run one after another; the threads of a block are ucontext
// fibers, each runs until it reaches a barrier (__syncthreads, or a warp shuffle/__syncwarp among
// its warp's lanes) or returns, then the next one runs. A barrier releases once every thread it
// waits for has arrived, so a kernel that relies on a missing barrier reads values that are not
// written yet (or the garbage shared memory starts with) instead of getting lucky.
// A fiber's stack is made once (makecontext) and then reused by every block and launch; switches
// are _setjmp/_longjmp, which, unlike swapcontext, make no system call.
#include <setjmp.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <cstdio>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda_shim.h"
#include "registry.h"

uint3 threadIdx, blockIdx;
dim3 blockDim, gridDim;

namespace fo_emu {
namespace {

enum State { kReady, kAtBlockBarrier, kAtWarpBarrier, kDone };
struct Fiber {
    ucontext_t start;  // used once, to enter the fiber's stack
    jmp_buf resume;
    bool started;
    State state;
    unsigned mask;
    uint3 tid;
};

constexpr size_t kStackBytes = 64 << 10;
jmp_buf scheduler;
std::vector<Fiber> fibers;
char* stacks = nullptr;
size_t stack_count = 0;
std::vector<uint64_t> exchange;  // 32 slots per warp
int current = 0;
std::string error;
const std::function<void()>* body = nullptr;
std::vector<void*> block_shared;  // __shared__ variables this block has declared
size_t shared_bytes = 0;

std::map<std::string, Invoker>& registry() {
    static std::map<std::string, Invoker> entries;
    return entries;
}

void yield_to_scheduler() {
    if (!_setjmp(fibers[current].resume)) _longjmp(scheduler, 1);
}

void fiber_main() {
    for (;;) {  // one kernel thread per turn, of whichever block and launch comes next
        (*body)();
        fibers[current].state = kDone;
        yield_to_scheduler();
    }
}

void resume(unsigned i) {
    current = int(i);
    threadIdx = fibers[i].tid;
    if (_setjmp(scheduler)) return;
    Fiber& f = fibers[i];
    if (f.started) _longjmp(f.resume, 1);
    f.started = true;
    getcontext(&f.start);
    f.start.uc_stack.ss_sp = stacks + i * kStackBytes;
    f.start.uc_stack.ss_size = kStackBytes;
    f.start.uc_link = nullptr;
    makecontext(&f.start, fiber_main, 0);
    setcontext(&f.start);
}

void reserve_stacks(size_t n) {
    if (n <= stack_count) return;
    if (stacks) munmap(stacks, stack_count * kStackBytes);
    for (Fiber& f : fibers) f.started = false;
    void* p = mmap(nullptr, n * kStackBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::runtime_error("cannot map fiber stacks");
    stacks = static_cast<char*>(p);
    stack_count = n;
    const size_t page = size_t(sysconf(_SC_PAGESIZE));
    for (size_t i = 0; i < n; ++i) mprotect(stacks + i * kStackBytes, page, PROT_NONE);  // overflow faults
}

std::string describe(unsigned i) {
    const uint3& t = fibers[i].tid;
    char buf[160];
    std::snprintf(buf, sizeof buf, "block (%u,%u,%u) thread (%u,%u,%u)", blockIdx.x, blockIdx.y, blockIdx.z, t.x,
                  t.y, t.z);
    return buf;
}

// Releases the warps whose every named lane waits at a warp barrier; false if none could go
// (or on an error, recorded in `error`: this runs on the scheduler's stack, not a fiber's).
bool release_warps(unsigned n) {
    auto bad = [](const std::string& message) {
        error = message;
        return false;
    };
    bool released = false;
    for (unsigned w = 0; w * 32 < n; ++w) {
        int first = -1;
        for (unsigned l = 0; l < 32 && w * 32 + l < n; ++l)
            if (fibers[w * 32 + l].state == kAtWarpBarrier) {
                first = int(w * 32 + l);
                break;
            }
        if (first < 0) continue;
        const unsigned mask = fibers[first].mask;
        bool all = true;
        for (unsigned l = 0; l < 32; ++l) {
            if (!(mask >> l & 1u)) continue;
            const unsigned i = w * 32 + l;
            const std::string who = describe(unsigned(first)) + ": a shuffle waits for lane " + std::to_string(l);
            if (i >= n) return bad(who + ", which is not in the block");
            if (fibers[i].state == kDone) return bad(who + ", which has exited");
            if (fibers[i].state != kAtWarpBarrier) all = false;
            else if (fibers[i].mask != mask) return bad(describe(i) + ": lanes of one warp shuffle with different masks");
        }
        if (!all) continue;
        for (unsigned l = 0; l < 32; ++l)
            if (mask >> l & 1u) fibers[w * 32 + l].state = kReady;
        released = true;
    }
    return released;
}

void run_block(unsigned n) {
    block_shared.clear();
    for (unsigned i = 0; i < n; ++i) {
        fibers[i].state = kReady;
        fibers[i].tid = uint3{i % blockDim.x, i / blockDim.x % blockDim.y, i / (blockDim.x * blockDim.y)};
    }
    for (;;) {
        for (unsigned i = 0; i < n; ++i) {
            if (fibers[i].state != kReady) continue;
            resume(i);
            if (!error.empty()) return;
        }
        unsigned live = 0, at_block = 0;
        for (unsigned i = 0; i < n; ++i) {
            live += fibers[i].state != kDone;
            at_block += fibers[i].state == kAtBlockBarrier;
        }
        if (live == 0) return;
        current = 0;
        if (release_warps(n)) continue;
        if (!error.empty()) return;
        if (at_block == live) {
            for (unsigned i = 0; i < n; ++i)
                if (fibers[i].state == kAtBlockBarrier) fibers[i].state = kReady;
            continue;
        }
        error = "deadlock in block (" + std::to_string(blockIdx.x) + "," + std::to_string(blockIdx.y) +
                "): some threads wait at __syncthreads, others at a warp shuffle";
        return;
    }
}

}  // namespace

void block_barrier() {
    fibers[current].state = kAtBlockBarrier;
    yield_to_scheduler();
}

void warp_barrier(unsigned mask) {
    fibers[current].state = kAtWarpBarrier;
    fibers[current].mask = mask;
    yield_to_scheduler();
}

void shared_declared(void* var, size_t bytes) {
    for (void* seen : block_shared)
        if (seen == var) return;
    block_shared.push_back(var);
    shared_bytes += bytes;
    std::memset(var, 0xff, bytes);  // NaN as float and double, -1 as an integer
}

uint64_t* warp_exchange() { return &exchange[size_t(current / 32) * 32]; }
unsigned lane_id() { return unsigned(current) % 32; }

void register_entries(const Entry* entries, size_t count) {
    for (size_t i = 0; i < count; ++i) registry()[entries[i].name] = entries[i].invoke;
}

void run_grid(const Launch& launch, const std::function<void()>& kernel) {
    const unsigned* g = launch.grid;
    const unsigned* b = launch.block;
    const unsigned long long threads = 1ull * b[0] * b[1] * b[2];
    if (!g[0] || !g[1] || !g[2] || !threads || threads > 1024 || b[2] > 64 || g[1] > 65535 || g[2] > 65535)
        throw std::runtime_error("invalid launch configuration (a GPU refuses it)");
    if (launch.shared_bytes != 0) throw std::runtime_error("dynamic shared memory is not emulated");
    const unsigned n = unsigned(threads);
    if (fibers.size() < n) fibers.resize(n, Fiber{});
    reserve_stacks(n);
    exchange.assign(size_t((n + 31) / 32) * 32, 0);
    gridDim = dim3{g[0], g[1], g[2]};
    blockDim = dim3{b[0], b[1], b[2]};
    body = &kernel;
    error.clear();
    for (unsigned z = 0; z < g[2]; ++z)
        for (unsigned y = 0; y < g[1]; ++y)
            for (unsigned x = 0; x < g[0]; ++x) {
                blockIdx = uint3{x, y, z};
                shared_bytes = 0;
                run_block(n);
                if (error.empty() && shared_bytes > 48 * 1024) error = "static shared memory over 48 KiB";
                if (!error.empty()) {
                    for (Fiber& f : fibers) f.started = false;  // abandoned mid-kernel: make them anew
                    throw std::runtime_error(error);
                }
            }
}

}  // namespace fo_emu

namespace {
std::string last_error;
}

extern "C" __attribute__((visibility("default"))) int fo_emu_launch(const char* name, const unsigned* grid,
                                                                    const unsigned* block, size_t shared_bytes,
                                                                    int nargs, const char* kinds,
                                                                    const int* sizes, const uint64_t* bits) {
    try {
        auto it = fo_emu::registry().find(name);
        if (it == fo_emu::registry().end()) throw std::runtime_error(std::string("no kernel named ") + name);
        std::vector<fo_emu::Arg> args(static_cast<size_t>(nargs));
        for (int i = 0; i < nargs; ++i) args[size_t(i)] = fo_emu::Arg{kinds[i], sizes[i], bits[i]};
        it->second(args.data(), nargs, fo_emu::Launch{{grid[0], grid[1], grid[2]}, {block[0], block[1], block[2]},
                                                      shared_bytes});
        return 0;
    } catch (const std::exception& e) {
        last_error = std::string(name) + ": " + e.what();
        return 1;
    }
}

extern "C" __attribute__((visibility("default"))) const char* fo_emu_last_error() { return last_error.c_str(); }

extern "C" __attribute__((visibility("default"))) int fo_emu_kernel_count() { return int(fo_emu::registry().size()); }
