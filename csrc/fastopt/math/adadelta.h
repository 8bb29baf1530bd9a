// AdaDelta: unit-corrected step sizes from two moving averages (Zeiler 2012;
// docs/algorithms.md, "AdaDelta").
#pragma once
#include "common.h"

namespace fastopt {

struct Adadelta {
    static constexpr int kNumVariants = 1;
    FASTOPT_HD static constexpr int num_states(int) { return 2; }

    // Host order: lr, rho, 1 - rho, eps.
    template <class T> struct Scalars {
        T lr, rho, one_minus_rho, eps;
        FASTOPT_HD explicit Scalars(const double* k) : lr(T(k[0])), rho(T(k[1])), one_minus_rho(T(k[2])), eps(T(k[3])) {}
    };

    // States: square_avg, acc_delta.
    template <int V, class T>
    FASTOPT_HD static void update(T& p, T g, T& square_avg, T& acc_delta, T&, const Scalars<T>& k) {
        square_avg = k.rho * square_avg + k.one_minus_rho * g * g;
        T delta = fo_sqrt(acc_delta + k.eps) / fo_sqrt(square_avg + k.eps) * g;
        acc_delta = k.rho * acc_delta + k.one_minus_rho * delta * delta;
        p = p - k.lr * delta;
    }
};

}  // namespace fastopt
