// Lion: the sign of an interpolated momentum (Chen et al. 2023, "Symbolic Discovery of
// Optimization Algorithms"; docs/algorithms.md, "Lion"). Weight decay is decoupled.
#pragma once
#include "common.h"

namespace fastopt {

struct Lion {
    static constexpr int kNumVariants = 1;
    FASTOPT_HD static constexpr int num_states(int) { return 1; }

    // Host order: lr, beta1, 1 - beta1, beta2, 1 - beta2.
    template <class T> struct Scalars {
        T lr, beta1, one_minus_beta1, beta2, one_minus_beta2;
        FASTOPT_HD explicit Scalars(const double* k)
            : lr(T(k[0])), beta1(T(k[1])), one_minus_beta1(T(k[2])), beta2(T(k[3])), one_minus_beta2(T(k[4])) {}
    };

    // State: exp_avg.
    template <int V, class T>
    FASTOPT_HD static void update(T& p, T g, T& m, T&, T&, const Scalars<T>& k) {
        T c = k.beta1 * m + k.one_minus_beta1 * g;
        p = p - k.lr * fo_sign(c);
        m = k.beta2 * m + k.one_minus_beta2 * g;
    }
};

}  // namespace fastopt
