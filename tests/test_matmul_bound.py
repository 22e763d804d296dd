"""The matmul ceiling finds every matmul of a training step, counts their FLOPs as the flop
counter does, and replays them."""

import pytest
import torch

from lensperf.bench.matmul_bound import bound, main, matmul_calls, matmul_flops, replay
from lensperf.bench.measure import flops_per_image, training_step

BATCH = 8


def _tiny_step():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    images = torch.randn(BATCH, 16)

    def loss_fn(m):
        return m(images).square().mean()

    per_image = flops_per_image(model, loss_fn, BATCH)
    step = training_step(model, loss_fn, device=torch.device("cpu"), amp=False, compile_=False)
    return step, per_image


def test_flops_of_one_call():
    assert matmul_flops("aten::mm", ((8, 16), (16, 32))) == 2 * 8 * 16 * 32
    assert matmul_flops("aten::addmm", ((32,), (8, 16), (16, 32))) == 2 * 8 * 16 * 32
    assert matmul_flops("aten::bmm", ((6, 7, 64), (6, 64, 5))) == 2 * 6 * 7 * 64 * 5


def test_the_recorded_matmuls_are_all_of_the_steps_flops():
    step, per_image = _tiny_step()
    step()
    calls = matmul_calls(step)
    assert {op for op, _, _ in calls} == {"aten::addmm", "aten::mm"}
    assert all(count >= 1 for _, _, count in calls)
    # forward: two addmm; backward: two weight gradients and one input gradient
    recorded = sum(matmul_flops(op, shapes) * count for op, shapes, count in calls)
    assert recorded == pytest.approx(per_image * BATCH)


def test_replay_runs_the_shapes_it_was_given(monkeypatch):
    # as the profiler lists them: addmm's scalars and out= tensor after its inputs
    calls = [("aten::bmm", ((3, 5, 4), (3, 4, 2)), 2),
             ("aten::addmm", ((6,), (7, 5), (5, 6), (), (), (7, 6)), 1)]  # fmt: skip
    calls_seen = []
    for name in ("bmm", "addmm"):
        real = getattr(torch, name)

        def recorded(*args, name=name, real=real):
            calls_seen.append((name, [t.shape for t in args]))
            return real(*args)

        monkeypatch.setattr(torch, name, recorded)
    out = replay(calls, torch.device("cpu"), torch.float32)()
    assert out.shape == ()  # a scalar, as a timed step returns
    assert calls_seen == [("bmm", [(3, 5, 4), (3, 4, 2)])] * 2 + [("addmm", [(6,), (7, 5), (5, 6)])]


def test_bound_reports_the_step_beside_its_ceiling():
    step, per_image = _tiny_step()
    r = bound(step, BATCH, per_image, device=torch.device("cpu"), dtype=torch.float32, windows=2)
    assert r["matmul_gflop_per_step"] == pytest.approx(r["model_gflop_per_step"])
    assert r["step_ms"] > 0 and r["matmuls_alone_ms"] > 0 and r["peak_tflops"] > 0
    assert 0 < r["step_fraction_of_peak"] and 0 < r["ceiling_fraction_of_peak"]
    assert len(r["matmul_calls"]) == 5


def test_cli_rejects_no_windows():
    with pytest.raises(SystemExit):
        main(["--windows", "0"])
