// Adam and AdamW, with optional AMSGrad (Kingma & Ba 2014; Loshchilov & Hutter 2019;
// Reddi et al. 2018; docs/algorithms.md, "Adam / AdamW"). AdamW is Adam with the decoupled decay of
// the shared prologue, applied by the driver.
#pragma once
#include "common.h"

namespace fastopt {

struct Adam {
    static constexpr int kAmsgrad = 1;
    static constexpr int kNumVariants = 2;
    FASTOPT_HD static constexpr int num_states(int v) { return v == kAmsgrad ? 3 : 2; }

    // Host order: beta1, 1 - beta1, beta2, 1 - beta2, step_size = lr / bc1, sqrt(bc2), eps.
    template <class T> struct Scalars {
        T beta1, one_minus_beta1, beta2, one_minus_beta2, step_size, bc2_sqrt, eps;
        FASTOPT_HD explicit Scalars(const double* k)
            : beta1(T(k[0])), one_minus_beta1(T(k[1])), beta2(T(k[2])), one_minus_beta2(T(k[3])),
              step_size(T(k[4])), bc2_sqrt(T(k[5])), eps(T(k[6])) {}
    };

    // States: exp_avg, exp_avg_sq, max_exp_avg_sq (AMSGrad only).
    template <int V, class T>
    FASTOPT_HD static void update(T& p, T g, T& m, T& v, T& vmax, const Scalars<T>& k) {
        m = k.beta1 * m + k.one_minus_beta1 * g;
        v = k.beta2 * v + k.one_minus_beta2 * g * g;
        T second = v;
        if (V == kAmsgrad) {
            vmax = fo_max(vmax, v);
            second = vmax;
        }
        T denom = fo_sqrt(second) / k.bc2_sqrt + k.eps;
        p = p - k.step_size * m / denom;
    }
};

}  // namespace fastopt
