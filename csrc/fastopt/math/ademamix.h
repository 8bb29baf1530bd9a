// AdEMAMix: Adam with a second, slow momentum mixed into the numerator (Pagliardini et al. 2024,
// "The AdEMAMix Optimizer: Better, Faster, Older"; docs/algorithms.md, "AdEMAMix"). Weight decay
// is decoupled, as AdamW's, applied by the driver; the alpha and beta3 warm-ups are host scalars.
#pragma once
#include "common.h"

namespace fastopt {

struct AdEMAMix {
    static constexpr int kNumVariants = 1;
    FASTOPT_HD static constexpr int num_states(int) { return 3; }

    // Host order: beta1, 1 - beta1, beta2, 1 - beta2, beta3_t, 1 - beta3_t, step_size = lr / bc1,
    // slow_size = lr * alpha_t, sqrt(bc2), eps.
    template <class T> struct Scalars {
        T beta1, one_minus_beta1, beta2, one_minus_beta2, beta3, one_minus_beta3, step_size, slow_size,
            bc2_sqrt, eps;
        FASTOPT_HD explicit Scalars(const double* k)
            : beta1(T(k[0])), one_minus_beta1(T(k[1])), beta2(T(k[2])), one_minus_beta2(T(k[3])),
              beta3(T(k[4])), one_minus_beta3(T(k[5])), step_size(T(k[6])), slow_size(T(k[7])),
              bc2_sqrt(T(k[8])), eps(T(k[9])) {}
    };

    // States: exp_avg (fast), exp_avg_sq, exp_avg_slow.
    template <int V, class T>
    FASTOPT_HD static void update(T& p, T g, T& m1, T& v, T& m2, const Scalars<T>& k) {
        m1 = k.beta1 * m1 + k.one_minus_beta1 * g;
        v = k.beta2 * v + k.one_minus_beta2 * g * g;
        m2 = k.beta3 * m2 + k.one_minus_beta3 * g;
        T denom = fo_sqrt(v) / k.bc2_sqrt + k.eps;
        p = p - (k.step_size * m1 + k.slow_size * m2) / denom;
    }
};

}  // namespace fastopt
