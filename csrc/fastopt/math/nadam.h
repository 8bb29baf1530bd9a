// NAdam: Adam with Nesterov momentum and the momentum-decay schedule of Dozat (2016)
// (docs/algorithms.md, "NAdam"). mu_t, mu_{t+1} and their running product are host scalars.
#pragma once
#include "common.h"

namespace fastopt {

struct NAdam {
    static constexpr int kNumVariants = 1;
    FASTOPT_HD static constexpr int num_states(int) { return 2; }

    // Host order: beta1, 1 - beta1, beta2, 1 - beta2, bc2 = 1 - beta2^t, eps,
    // grad_coef = lr (1 - mu_t) / (1 - mu_product_t), avg_coef = lr mu_{t+1} / (1 - mu_product_t mu_{t+1}).
    template <class T> struct Scalars {
        T beta1, one_minus_beta1, beta2, one_minus_beta2, bc2, eps, grad_coef, avg_coef;
        FASTOPT_HD explicit Scalars(const double* k)
            : beta1(T(k[0])), one_minus_beta1(T(k[1])), beta2(T(k[2])), one_minus_beta2(T(k[3])),
              bc2(T(k[4])), eps(T(k[5])), grad_coef(T(k[6])), avg_coef(T(k[7])) {}
    };

    // States: exp_avg, exp_avg_sq.
    template <int V, class T>
    FASTOPT_HD static void update(T& p, T g, T& m, T& v, T&, const Scalars<T>& k) {
        m = k.beta1 * m + k.one_minus_beta1 * g;
        v = k.beta2 * v + k.one_minus_beta2 * g * g;
        T denom = fo_sqrt(v / k.bc2) + k.eps;
        p = p - k.grad_coef * g / denom - k.avg_coef * m / denom;
    }
};

}  // namespace fastopt
