// Every optimizer rule, and the one list that numbers them for the drivers and bindings.
#pragma once
#include "sgd.h"
#include "adagrad.h"
#include "rmsprop.h"
#include "adadelta.h"
#include "adam.h"
#include "adamax.h"
#include "nadam.h"
#include "radam.h"
#include "lion.h"
#include "step.h"

// X(rule, id): the id is what the Python side passes (fastopt/_kernels.py, OPTIMIZER_IDS).
#define FASTOPT_FOR_EACH_OPTIMIZER(X) \
    X(SGD, 0)                         \
    X(Adagrad, 1)                     \
    X(RMSprop, 2)                     \
    X(Adadelta, 3)                    \
    X(Adam, 4)                        \
    X(Adamax, 5)                      \
    X(NAdam, 6)                       \
    X(RAdam, 7)                       \
    X(Lion, 8)
