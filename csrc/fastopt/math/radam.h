// RAdam: Adam with the variance rectification of Liu et al. (2020) (docs/algorithms.md, "RAdam").
// Whether step t is rectified (rho_t > 5) and its factor r are host scalars.
#pragma once
#include "common.h"

namespace fastopt {

struct RAdam {
    static constexpr int kNumVariants = 1;
    FASTOPT_HD static constexpr int num_states(int) { return 2; }

    // Host order: beta1, 1 - beta1, beta2, 1 - beta2, rectified (0/1),
    // adaptive_step = lr r sqrt(bc2) / bc1, plain_step = lr / bc1, eps.
    template <class T> struct Scalars {
        T beta1, one_minus_beta1, beta2, one_minus_beta2;
        T rectified;  // 1 or 0; a float for the reason given at prologue_grad
        T adaptive_step, plain_step, eps;
        FASTOPT_HD explicit Scalars(const double* k)
            : beta1(T(k[0])), one_minus_beta1(T(k[1])), beta2(T(k[2])), one_minus_beta2(T(k[3])),
              rectified(T(k[4])), adaptive_step(T(k[5])), plain_step(T(k[6])), eps(T(k[7])) {}
    };

    // States: exp_avg, exp_avg_sq.
    template <int V, class T>
    FASTOPT_HD static void update(T& p, T g, T& m, T& v, T&, const Scalars<T>& k) {
        m = k.beta1 * m + k.one_minus_beta1 * g;
        v = k.beta2 * v + k.one_minus_beta2 * g * g;
        T step = k.rectified != T(0) ? k.adaptive_step * m / (fo_sqrt(v) + k.eps) : k.plain_step * m;
        p = p - step;
    }
};

}  // namespace fastopt
