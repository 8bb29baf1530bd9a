// SGD with optional heavy-ball or Nesterov momentum (docs/algorithms.md, "SGD").
#pragma once
#include "common.h"

namespace fastopt {

struct SGD {
    enum Variant { kPlain = 0, kMomentum = 1, kNesterov = 2, kVelocity = 3, kVelocityNesterov = 4 };
    static constexpr int kNumVariants = 5;
    FASTOPT_HD static constexpr int num_states(int variant) { return variant == kPlain ? 0 : 1; }

    // Host order of the per-step scalars: lr, momentum, 1 - dampening, first_step.
    template <class T> struct Scalars {
        // first_step (1 or 0): the buffer starts from the gradient, as torch does. A float, not a
        // bool, for the reason given at prologue_grad.
        T lr, momentum, one_minus_dampening, first_step;
        FASTOPT_HD explicit Scalars(const double* k)
            : lr(T(k[0])), momentum(T(k[1])), one_minus_dampening(T(k[2])), first_step(T(k[3])) {}
    };

    // buf is torch's momentum_buffer; in the velocity forms it holds the textbook velocity
    // v = momentum * v - lr * g (Deep Learning, Alg. 8.2; Nesterov in look-ahead form, Alg. 8.3).
    template <int V, class T>
    FASTOPT_HD static void update(T& p, T g, T& buf, T&, T&, const Scalars<T>& k) {
        if (V == kPlain) {
            p = p - k.lr * g;
        } else if (V == kMomentum || V == kNesterov) {
            buf = k.first_step != T(0) ? g : k.momentum * buf + k.one_minus_dampening * g;
            T direction = V == kNesterov ? g + k.momentum * buf : buf;
            p = p - k.lr * direction;
        } else {
            T step = k.lr * g;
            buf = k.first_step != T(0) ? -step : k.momentum * buf - step;
            p = p + (V == kVelocityNesterov ? k.momentum * buf - step : buf);
        }
    }
};

}  // namespace fastopt
