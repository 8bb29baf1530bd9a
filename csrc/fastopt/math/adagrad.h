// AdaGrad: per-coordinate step sizes from the running sum of squared gradients
// (Duchi et al. 2011; docs/algorithms.md, "AdaGrad").
#pragma once
#include "common.h"

namespace fastopt {

struct Adagrad {
    static constexpr int kNumVariants = 1;
    FASTOPT_HD static constexpr int num_states(int) { return 1; }

    // Host order: clr = lr / (1 + (t - 1) * lr_decay), eps inside the sqrt, eps outside it
    // (one of the two is zero, chosen by eps_inside_sqrt).
    template <class T> struct Scalars {
        T clr, eps_inside, eps_outside;
        FASTOPT_HD explicit Scalars(const double* k) : clr(T(k[0])), eps_inside(T(k[1])), eps_outside(T(k[2])) {}
    };

    template <int V, class T>
    FASTOPT_HD static void update(T& p, T g, T& sum, T&, T&, const Scalars<T>& k) {
        sum = sum + g * g;
        p = p - k.clr * g / (fo_sqrt(sum + k.eps_inside) + k.eps_outside);
    }
};

}  // namespace fastopt
