"""Quantized optimizer state (state_dtype="8bit" / "fp8") in checkpoints, list steps and the
benchmark: state_dict round trips and conversions between representations, fastopt.save / load,
bitsandbytes' state both ways, param groups, and the harness's rows."""
import numpy as np
import pytest

import fastopt
from conftest import random_arrays
from fastopt import blockwise


# ---- checkpoints ------------------------------------------------------------------------------

def test_state_dict_round_trips_and_converts(backend):
    start, grads = random_arrays(5000, np.float32, 4, 6)
    a = start.copy()
    opt = fastopt.Adam(a, lr=0.01, backend=backend, state_dtype="8bit")
    for g in grads[:3]:
        opt.step(g)
    sd = opt.state_dict()
    assert sd["state"][0]["quantization"] == "8bit" and sd["state"][0]["exp_avg"].dtype == np.uint8
    # Same scheme: codes and scales as saved; the continued runs agree bit for bit.
    b = a.copy()
    same = fastopt.Adam(b, lr=0.01, backend=backend, state_dtype="8bit")
    same.load_state_dict(sd)
    # Float32 state: dequantized.
    wide = fastopt.Adam(a.copy(), lr=0.01, backend=backend)
    wide.load_state_dict(sd)
    np.testing.assert_array_equal(wide.state["exp_avg_sq"], blockwise.dequantize(
        sd["state"][0]["exp_avg_sq"], sd["state"][0]["exp_avg_sq_absmax"], blockwise.UNSIGNED))
    # Back to 8 bits: quantizing the dequantized state gives the same codes and scales, except
    # in signed blocks whose largest magnitude is negative (the signed map has 1 but not -1, so
    # that block's scale shrinks by the map's smallest value, -0.99296875).
    back = fastopt.Adam(a.copy(), lr=0.01, backend=backend, state_dtype="8bit")
    back.load_state_dict(wide.state_dict())
    for key in ("exp_avg_sq", "exp_avg_sq_absmax"):
        np.testing.assert_array_equal(back.state[key], sd["state"][0][key])
    codes = sd["state"][0]["exp_avg"]
    positive_max = np.array([np.any(codes[i:i + 256] == 255) for i in range(0, codes.size, 256)])
    assert positive_max.any() and not positive_max.all()
    np.testing.assert_array_equal(back.state["exp_avg_absmax"][positive_max],
                                  sd["state"][0]["exp_avg_absmax"][positive_max])
    same_blocks = np.repeat(positive_max, 256)[:codes.size]
    np.testing.assert_array_equal(back.state["exp_avg"][same_blocks], codes[same_blocks])
    for g in grads[3:]:
        opt.step(g)
        same.step(g)
    np.testing.assert_array_equal(a, b)
    # A bad checkpoint changes nothing.
    broken = same.state_dict()
    broken["state"][0]["exp_avg_absmax"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match="block scales"):
        same.load_state_dict(broken)


# ---- bitsandbytes ------------------------------------------------------------------------------

BITSANDBYTES_TWINS = [(bnb_name, ours) for rule in fastopt.rules.BUILTIN
                      for ours, bnb_name in getattr(rule, "BITSANDBYTES", {}).items()]


@pytest.mark.parametrize("bnb_name, ours", BITSANDBYTES_TWINS)
def test_bitsandbytes_state_converts_both_ways(bnb_name, ours):
    """bitsandbytes' CPU 8-bit optimizer state loads into fastopt with the same codes and scales,
    and converts back to the tensors it came from."""
    torch = pytest.importorskip("torch")
    bnb = pytest.importorskip("bitsandbytes")
    gen = torch.Generator().manual_seed(0)
    p = torch.nn.Parameter(torch.randn(5000, generator=gen))
    opt = getattr(bnb.optim, bnb_name)([p], lr=1e-3)
    for _ in range(3):
        p.grad = torch.randn(5000, generator=gen)
        opt.step()
    theirs = opt.state_dict()["state"][0]
    # bitsandbytes' state1, state2 are the first of fastopt's state names.
    count = sum(key.startswith("state") for key in theirs[blockwise.BNB_NESTED])
    names = getattr(fastopt, ours)._state_array_names[:count]
    assert count and len(names) == count
    entry = blockwise.from_bitsandbytes(theirs, names)
    mine = getattr(fastopt, ours)(p.detach().numpy().copy(), lr=1e-3, state_dtype="8bit")
    sd = mine.state_dict()
    sd["state"] = {0: entry}
    mine.load_state_dict(sd)
    assert mine.state["step"] == 3 and mine.state["quantization"] == "8bit"
    nested = theirs[blockwise.BNB_NESTED]
    for j, name in enumerate(names, 1):
        np.testing.assert_array_equal(mine.state[name], nested[f"state{j}"].numpy())
        np.testing.assert_array_equal(mine.state[name + "_absmax"], nested[f"absmax{j}"].numpy())
    back = blockwise.to_bitsandbytes(mine.state_dict()["state"][0], names)
    assert back["step"] == 3
    for key, value in nested.items():
        assert torch.equal(back[key], value), key
    # And bitsandbytes takes it back: the next step from the converted state gives its own bits.
    twin = torch.nn.Parameter(p.detach().clone())
    other = getattr(bnb.optim, bnb_name)([twin], lr=1e-3)
    twin.grad = torch.zeros_like(twin)
    other.step()  # creates the state buffers (and, with weight decay, moves twin: put it back)
    with torch.no_grad():
        twin.copy_(p)
    for key, value in back.items():
        if key == "step":
            other.state[twin][key] = value
        else:
            other.state[twin][key].copy_(value)
    g = torch.randn(5000, generator=gen)
    p.grad, twin.grad = g.clone(), g.clone()
    opt.step()
    other.step()
    assert torch.equal(p, twin)


# ---- the benchmark rows ----------------------------------------------------------------------------

def test_bench_rows_say_what_was_measured():
    """The harness's quantized-state rows (timings are not asserted): every workload, its byte
    pattern, the limit, the state bytes per parameter and the ratio to torch's fused Adam."""
    pytest.importorskip("fastopt._cpu")
    from fastopt.bench import quantized
    from fastopt.bench.runner import Config, Run

    run = Run(Config(quick=True, only="quantized", threads=[1], repeats=1, backends=["cpu"], stream=None))
    quantized.task(run, 1, n=8192, schemes=("8bit", "fp8"))
    rows = [r for r in run.records if "skipped" not in r]
    mine = [r for r in rows if r["impl"] in ("fastopt[cpu] 8bit", "fastopt[cpu] fp8")]
    assert {r["workload"].split(" n=")[0] for r in mine} == {w[0] for w in quantized.WORKLOADS}
    for r in mine:
        cls = r["workload"].split(" n=")[0].split()[1]
        probe = getattr(fastopt, cls)(np.zeros(8192, np.float32), state_dtype="8bit")
        probe.step(np.ones(8192, np.float32))
        states = sum(key.endswith("_absmax") for key in probe.state)
        param_bytes = 2 if "bf16" in r["workload"] else 4
        assert r["bytes_per_element"] == 3 * param_bytes + 2 * states
        assert r["state_bytes_per_param"] == pytest.approx(states * (1 + 4 / 256))
        assert 0 < r["fraction_of_limit"] and r["limit_seconds"] > 0
    if any(r["impl"].startswith("torch-fused") for r in rows):
        assert all("speedup_vs_torch_fused_adam" in r for r in mine)



def test_bench_plans_the_in_cache_rows_once():
    """A full run times the quantized step in cache once, on one thread, whatever the thread
    counts; a quick run does not. The rows carry the tag in their workload names."""
    pytest.importorskip("fastopt._cpu")
    from fastopt.bench import quantized
    from fastopt.bench.runner import Config, Run

    def planned(quick):
        run = Run(Config(quick=quick, only="quantized", threads=[2, 1], repeats=1, backends=["cpu"], stream=None))
        run.plan()
        return [name for name, _ in run.tasks]

    assert planned(False).count("quantized state in cache, one thread") == 1
    assert not any("in cache" in name for name in planned(True))
    run = Run(Config(quick=True, only="quantized", threads=[1], repeats=1, backends=["cpu"], stream=None))
    quantized.task(run, 1, n=8192, schemes=("8bit",), where=" in cache")
    assert {r["workload"] for r in run.records} == {f"{w[0]} n=8.2e+03 in cache" for w in quantized.WORKLOADS}

def test_checkpoint_files_and_scheme_conversion(tmp_path):
    """fastopt.save / load keep codes, scales and the scheme; an fp8 checkpoint loads into an
    8-bit optimizer (dequantized, requantized) and the other way."""
    start, grads = random_arrays(5000, np.float32, 6, 3)
    opt = fastopt.AdamW(start.copy(), lr=0.01, state_dtype="fp8")
    for g in grads:
        opt.step(g)
    path = tmp_path / "opt.fastopt"
    fastopt.save(opt, path)
    same = fastopt.AdamW(start.copy(), lr=0.01, state_dtype="fp8")
    fastopt.load(same, path)
    assert same.state["quantization"] == "fp8"
    for key in ("exp_avg", "exp_avg_absmax", "exp_avg_sq", "exp_avg_sq_absmax"):
        np.testing.assert_array_equal(same.state[key], opt.state[key])
    other = fastopt.AdamW(start.copy(), lr=0.01, state_dtype="8bit")
    other.load_state_dict(opt.state_dict())
    assert other.state["quantization"] == "8bit"
    for key in ("exp_avg", "exp_avg_sq"):
        fp8 = blockwise.dequantize(opt.state[key], opt.state[key + "_absmax"], blockwise.FP8)
        eight = blockwise.dequantize(other.state[key], other.state[key + "_absmax"], blockwise.map_for(key))
        np.testing.assert_array_equal(other.state[key], blockwise.quantize(fp8, blockwise.map_for(key))[0])
        # Requantized: within the 8-bit map's widest gap (0.7% of a block's absmax).
        scale = np.repeat(opt.state[key + "_absmax"], 256)[:5000]
        assert np.all(np.abs(eight - fp8) <= 0.0071 * scale)


def test_list_steps_and_groups_match_one_array_each(backend):
    """A list of arrays in two groups (the reused step plan included) gives each array the bits of
    its own one-array optimizer; small arrays keep float32 state beside quantized ones."""
    sizes = [5000, 100, 9000]
    starts = [random_arrays(n, np.float32, 20 + j, 1)[0] for j, n in enumerate(sizes)]
    grads = [[random_arrays(n, np.float32, 30 + j + 10 * t, 1)[0] for j, n in enumerate(sizes)] for t in range(4)]
    params = [s.copy() for s in starts]
    opt = fastopt.Adam([{"params": params[:2]}, {"params": params[2:], "lr": 0.003}], lr=0.01, backend=backend,
                       state_dtype="8bit")
    fixed = [g.copy() for g in grads[0]]
    for t in range(4):
        for j in range(3):
            fixed[j][...] = grads[t][j]  # the same gradient arrays: the plan is reused
        opt.step(fixed)
    for j, n in enumerate(sizes):
        alone = starts[j].copy()
        single = fastopt.Adam(alone, lr=0.003 if j == 2 else 0.01, backend=backend, state_dtype="8bit")
        for t in range(4):
            single.step(grads[t][j])
        np.testing.assert_array_equal(params[j], alone)
        assert (opt.state[j].get("quantization") == "8bit") == (n >= blockwise.MIN_QUANTIZED_SIZE)
