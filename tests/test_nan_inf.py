"""Each statement of docs/nan_inf.md."""
import math

import numpy as np
import pytest

import fastopt
import rule_table


def test_nan_gradient_propagates_to_its_element_only(backend):
    p = np.ones(64, np.float32)
    g = np.full(64, 0.5, np.float32)
    g[10] = np.nan
    opt = fastopt.Adam(p, lr=0.1, backend=backend)
    opt.step(g)
    assert np.isnan(p[10]) and np.isnan(opt.state["exp_avg"][10])
    others = np.arange(64) != 10
    assert np.all(np.isfinite(p[others])) and np.all(p[others] == p[0])


def test_skip_nonfinite_reports_and_writes_nothing(backend):
    p = np.ones(64, np.float32)
    opt = fastopt.Adam(p, lr=0.1, backend=backend)
    g = np.ones(64, np.float32)
    g[3] = np.inf
    norm = opt.step(g, skip_nonfinite=True)
    assert math.isinf(norm) and opt.last_step_skipped and opt.state["step"] == 0
    assert np.all(p == 1) and np.all(opt.state["exp_avg"] == 0)
    result = fastopt.functional.sgd(p, g, lr=0.1, skip_nonfinite=True, backend=backend)
    assert result.skipped and math.isinf(result.grad_norm) and np.all(p == 1)


def test_float64_overflowing_squares_count_as_nonfinite(backend):
    g = np.array([1e200, 1.0])
    assert math.isinf(fastopt.grad_norm(g, backend=backend))
    p = np.zeros(2)
    assert fastopt.functional.sgd(p, g, lr=0.1, skip_nonfinite=True, backend=backend).skipped


def test_clip_with_infinite_norm(backend):
    p = np.ones(4, np.float32)
    g = np.array([1.0, 2.0, np.inf, 3.0], np.float32)
    result = fastopt.functional.sgd(p, g, lr=0.1, max_grad_norm=1.0, backend=backend)
    assert math.isinf(result.grad_norm) and not result.skipped
    assert p[0] == 1 and p[1] == 1 and p[3] == 1 and np.isnan(p[2])


def test_clip_with_nan_norm_leaves_factor_one(backend):
    p = np.ones(3, np.float32)
    g = np.array([1.0, np.nan, 3.0], np.float32)
    result = fastopt.functional.sgd(p, g, lr=0.1, max_grad_norm=1.0, backend=backend)
    assert math.isnan(result.grad_norm)
    assert p[0] == np.float32(0.9) and np.isnan(p[1]) and p[2] == np.float32(1 - 0.3)


@pytest.mark.parametrize("cls, kwargs", rule_table.rows("sample"))
def test_nonfinite_parameters_stay_as_they_are(backend, cls, kwargs):
    p = np.array([np.nan, np.inf, -np.inf, 1.0], np.float32)
    opt = cls(p, backend=backend, **kwargs)
    for _ in range(3):
        opt.step(np.ones(4, np.float32))
    assert np.isnan(p[0]) and p[1] == np.inf and p[2] == -np.inf and np.isfinite(p[3])
    assert np.all(np.isfinite(opt.state["exp_avg" if cls is not fastopt.SGD else "momentum_buffer"]))


def test_weight_decay_multiplies_infinite_parameters(backend):
    p = np.array([np.inf, 1.0], np.float32)
    fastopt.Adam(p, lr=0.1, weight_decay=0.1, backend=backend).step(np.ones(2, np.float32))
    assert np.isnan(p[0]) and np.isfinite(p[1])


def test_max_propagates_nan(backend):
    p = np.ones(2, np.float32)
    opt = fastopt.Adam(p, lr=0.1, amsgrad=True, backend=backend)
    opt.step(np.ones(2, np.float32))  # creates the state
    opt.state["max_exp_avg_sq"][0] = np.nan
    opt.step(np.ones(2, np.float32))
    assert np.isnan(opt.state["max_exp_avg_sq"][0]) and np.isnan(p[0]) and np.isfinite(p[1])
    p = np.ones(2, np.float32)
    opt = fastopt.Adamax(p, lr=0.1, backend=backend)
    opt.step(np.ones(2, np.float32))
    opt.state["exp_inf"][0] = np.nan
    opt.step(np.ones(2, np.float32))
    assert np.isnan(opt.state["exp_inf"][0]) and np.isfinite(p[1])


def test_half_overflow_and_nan(backend):
    p = np.array([65000.0, 1.0, np.nan], np.float16)
    opt = fastopt.SGD(p, lr=1.0, master_weights=True, maximize=True, backend=backend)
    opt.step(np.array([1000.0, 1.0, 1.0], np.float16))
    master = opt.state["master_weights"]
    assert p[0] == np.inf and master[0] == np.float32(np.float16(65000.0)) + 1000  # the master stays finite
    assert p[1] == 2 and np.isnan(p[2]) and np.isnan(master[2])
    opt.step(np.array([-2000.0, 0.0, 0.0], np.float16))
    assert p[0] == np.float16(64000.0)  # back in range: training continues from the master


def test_float16_rounding_boundary_and_nan_sign(backend):
    """Beyond the largest float16 (65504) values round to 65504 up to 65520 (exclusive), then to
    infinity; a NaN keeps its sign."""
    p = np.array([65504.0, 65504.0, -np.nan, 1.0], np.float16)
    opt = fastopt.SGD(p, lr=1.0, master_weights=True, maximize=True, backend=backend)
    opt.step(np.array([15.9921875, 16.0, 0.0, 0.0], np.float32))  # a float32 gradient for a half param
    assert p[0] == 65504 and p[1] == np.inf
    assert np.isnan(p[2]) and np.signbit(p[2])


def test_bfloat16_nan_keeps_its_sign(backend):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    p = np.array([-np.nan, np.nan, 1.0], ml_dtypes.bfloat16)
    opt = fastopt.SGD(p, lr=0.5, master_weights=True, backend=backend)
    opt.step(np.ones(3, np.float32))
    bits = p.view(np.uint16)
    assert np.all(np.isnan(p[:2].astype(np.float32))) and bits[0] & 0x8000 and not bits[1] & 0x8000
    assert p[2] == 0.5
