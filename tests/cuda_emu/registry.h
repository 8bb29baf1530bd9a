// How a kernel instantiation is launched by name: the generated translation units list each
// launcher name expression with its function; arguments arrive as (kind, size, bits) triples, as
// CuPy packs them, and are checked against the kernel's parameter types before any thread runs.
#pragma once
#include <cstdint>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

namespace fo_emu {

struct Arg {
    char kind;  // 'p' array pointer, 'b' bool, 'i' signed, 'u' unsigned, 'f' floating
    int size;
    uint64_t bits;
};

struct Launch {
    unsigned grid[3], block[3];
    size_t shared_bytes;
};

using Invoker = void (*)(const Arg*, int, const Launch&);
struct Entry {
    const char* name;
    Invoker invoke;
};

void register_entries(const Entry* entries, size_t count);
void run_grid(const Launch& launch, const std::function<void()>& kernel);

struct Registrar {
    Registrar(const Entry* entries, size_t count) { register_entries(entries, count); }
};

// A wrong scalar type is what CuPy would silently misread (an int32 where the kernel takes a
// long long), so it is an error here.
template <class T> T convert(const Arg& a, int index) {
    if constexpr (std::is_pointer_v<T>) {
        if (a.kind == 'p' || (a.kind == 'u' && a.size == 8)) return reinterpret_cast<T>(uintptr_t(a.bits));
        throw std::runtime_error("argument " + std::to_string(index) + ": the kernel takes a pointer");
    } else {
        constexpr char kind = std::is_same_v<T, bool> ? 'b'
                              : std::is_floating_point_v<T> ? 'f'
                              : std::is_signed_v<T> ? 'i' : 'u';
        if (a.kind != kind || a.size != int(sizeof(T)))
            throw std::runtime_error("argument " + std::to_string(index) + ": the kernel takes " + kind +
                                     std::to_string(sizeof(T)) + ", the launcher passed " + a.kind +
                                     std::to_string(a.size));
        T v;
        std::memcpy(&v, &a.bits, sizeof(T));
        return v;
    }
}

template <class... A, size_t... I>
std::tuple<A...> convert_all(const Arg* args, std::index_sequence<I...>) {
    return std::tuple<A...>{convert<A>(args[I], int(I))...};  // braces: evaluated in order
}

template <class... A> void launch_with(void (*kernel)(A...), const Arg* args, int nargs, const Launch& launch) {
    if (nargs != int(sizeof...(A)))
        throw std::runtime_error("the kernel takes " + std::to_string(sizeof...(A)) + " arguments, got " +
                                 std::to_string(nargs));
    const std::tuple<A...> values = convert_all<A...>(args, std::index_sequence_for<A...>{});
    run_grid(launch, [&] { std::apply(kernel, values); });
}

template <auto Kernel> void invoke(const Arg* args, int nargs, const Launch& launch) {
    launch_with(Kernel, args, nargs, launch);
}

}  // namespace fo_emu
