// Adamax: Adam with the infinity norm in place of the second moment (Kingma & Ba 2014, sec. 7;
// docs/algorithms.md, "Adamax").
#pragma once
#include "common.h"

namespace fastopt {

struct Adamax {
    static constexpr int kNumVariants = 1;
    FASTOPT_HD static constexpr int num_states(int) { return 2; }

    // Host order: beta1, 1 - beta1, beta2, clr = lr / (1 - beta1^t), eps.
    template <class T> struct Scalars {
        T beta1, one_minus_beta1, beta2, clr, eps;
        FASTOPT_HD explicit Scalars(const double* k)
            : beta1(T(k[0])), one_minus_beta1(T(k[1])), beta2(T(k[2])), clr(T(k[3])), eps(T(k[4])) {}
    };

    // States: exp_avg, exp_inf.
    template <int V, class T>
    FASTOPT_HD static void update(T& p, T g, T& m, T& u, T&, const Scalars<T>& k) {
        m = k.beta1 * m + k.one_minus_beta1 * g;
        u = fo_max(k.beta2 * u, fo_abs(g) + k.eps);
        p = p - k.clr * m / u;
    }
};

}  // namespace fastopt
