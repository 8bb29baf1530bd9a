// Schedule-Free SGD and AdamW (Defazio et al. 2024, "The Road Less Scheduled"; docs/algorithms.md,
// "Schedule-Free SGD / AdamW"). The parameter buffer holds y, the point the gradient is taken
// at; z is the base sequence and x, the average the model is evaluated at, is never stored:
// opt.eval() and opt.train() move the buffer between y and x with the kSwitch variant.
// Weight decay is the rule's own, taken at y after the normalisation (the host turns the
// shared prologue's decay off).
#pragma once
#include "common.h"

namespace fastopt {

struct ScheduleFree {
    static constexpr int kSGD = 0;
    static constexpr int kAdamW = 1;
    static constexpr int kSwitch = 2;  // p = lerp(p, z, c): the train <-> eval move
    static constexpr int kNumVariants = 3;
    FASTOPT_HD static constexpr int num_states(int v) { return v == kAdamW ? 2 : 1; }
    FASTOPT_HD static constexpr bool reads_grad(int v) { return v != kSwitch; }

    // Host order: c = w / W (the lerp weight), 1 - c, lr_t, y_coef = lr_t (beta1 (1 - c) - 1),
    // weight_decay, beta2, 1 - beta2, bc2 = 1 - beta2^t, eps. kSwitch reads c and 1 - c only.
    template <class T> struct Scalars {
        T c, one_minus_c, lr, y_coef, weight_decay, beta2, one_minus_beta2, bc2, eps;
        FASTOPT_HD explicit Scalars(const double* k)
            : c(T(k[0])), one_minus_c(T(k[1])), lr(T(k[2])), y_coef(T(k[3])), weight_decay(T(k[4])),
              beta2(T(k[5])), one_minus_beta2(T(k[6])), bc2(T(k[7])), eps(T(k[8])) {}
    };

    // torch.lerp's two-sided form, so that float64 results follow the reference package's.
    template <class T> FASTOPT_HD static T lerp(T a, T b, const Scalars<T>& k) {
        T d = b - a;
        T low = a + k.c * d;
        T high = b - d * k.one_minus_c;
        return k.c < T(0.5) ? low : high;
    }

    // States: z, exp_avg_sq (AdamW only).
    template <int V, class T>
    FASTOPT_HD static void update(T& y, T g, T& z, T& v, T&, const Scalars<T>& k) {
        if (V == kSwitch) {
            y = lerp(y, z, k);
            return;
        }
        T u = g;
        if (V == kAdamW) {
            v = k.beta2 * v + k.one_minus_beta2 * g * g;
            u = g / (fo_sqrt(v / k.bc2) + k.eps);
        }
        // As in the prologue, wd * y is skipped rather than multiplied by zero (an infinite y).
        u = k.weight_decay != T(0) ? u + k.weight_decay * y : u;
        y = lerp(y, z, k);
        y = y + k.y_coef * u;
        z = z - k.lr * u;
    }
};

}  // namespace fastopt
