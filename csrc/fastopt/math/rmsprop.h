// RMSProp: step sizes from an exponential moving average of squared gradients (Hinton's
// lecture 6e; Deep Learning Alg. 8.5 and 8.6; docs/algorithms.md, "RMSProp").
#pragma once
#include "common.h"

namespace fastopt {

struct RMSprop {
    // Bit 0: centered (keeps grad_avg); bits 1-2: 0 no momentum, 1 momentum, 2 Nesterov momentum.
    static constexpr int kCentered = 1, kMomentum = 2, kNesterov = 4;
    static constexpr int kNumVariants = 6;
    FASTOPT_HD static constexpr int num_states(int v) { return 1 + (v & kCentered) + ((v & (kMomentum | kNesterov)) ? 1 : 0); }

    // Host order: lr, alpha, 1 - alpha, eps inside the sqrt, eps outside it, momentum.
    template <class T> struct Scalars {
        T lr, alpha, one_minus_alpha, eps_inside, eps_outside, momentum;
        FASTOPT_HD explicit Scalars(const double* k)
            : lr(T(k[0])), alpha(T(k[1])), one_minus_alpha(T(k[2])), eps_inside(T(k[3])),
              eps_outside(T(k[4])), momentum(T(k[5])) {}
    };

    // States in order: square_avg, then grad_avg when centered, then momentum_buffer.
    template <int V, class T>
    FASTOPT_HD static void update(T& p, T g, T& square_avg, T& s1, T& s2, const Scalars<T>& k) {
        constexpr bool centered = (V & kCentered) != 0;
        constexpr bool momentum = (V & (kMomentum | kNesterov)) != 0;
        T& grad_avg = s1;
        T& buf = centered ? s2 : s1;
        square_avg = k.alpha * square_avg + k.one_minus_alpha * g * g;
        T variance = square_avg;
        if (centered) {
            grad_avg = k.alpha * grad_avg + k.one_minus_alpha * g;
            variance = square_avg - grad_avg * grad_avg;
        }
        T scaled = g / (fo_sqrt(variance + k.eps_inside) + k.eps_outside);
        if (momentum) {
            buf = k.momentum * buf + scaled;
            p = p - k.lr * ((V & kNesterov) ? scaled + k.momentum * buf : buf);
        } else {
            p = p - k.lr * scaled;
        }
    }
};

}  // namespace fastopt
