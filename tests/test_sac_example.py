"""The SAC example (examples/sac_pendulum.py): the two policy heads agree, and a short run learns Pendulum-v1."""
import importlib.util
import math
from pathlib import Path

import pytest
import torch

pytest.importorskip("gymnasium")
import rtrick_ops as rt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# The quick run's deterministic evaluation goes from about -1300 (untrained) to better than -400.
CLEAR_IMPROVEMENT = 500.0


def load_example():
    spec = importlib.util.spec_from_file_location("sac_pendulum", ROOT / "examples" / "sac_pendulum.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_textbook_and_fused_heads_agree_on_the_same_weights():
    """Same layer, same u: the same action and, up to the textbook 1e-6 in its tanh correction, log-prob."""
    example = load_example()
    torch.manual_seed(0)
    textbook = example.policy_head("textbook", 16, 2, action_scale=2.0).double()
    fused = example.policy_head("fused", 16, 2, action_scale=2.0).double()
    assert isinstance(fused, rt.nn.GaussianPolicyHead)
    fused.load_state_dict(textbook.state_dict())
    features = torch.randn(32, 16, dtype=torch.float64)
    (textbook_action, textbook_log_prob), (fused_action, fused_log_prob) = (
        head(features, deterministic=True) for head in (textbook, fused))
    assert textbook_action.shape == fused_action.shape == (32, 2) and fused_action.dtype == torch.float64
    assert textbook_log_prob.shape == fused_log_prob.shape == (32,) and fused_log_prob.dtype == torch.float64
    torch.testing.assert_close(fused_action, textbook_action)
    torch.testing.assert_close(fused_log_prob, textbook_log_prob, rtol=1e-4, atol=1e-4)
    action, log_prob = fused(features)  # stochastic: inside the action bounds, finite log-prob
    assert (action.abs() <= 2.0).all() and torch.isfinite(log_prob).all()


def test_unknown_policy_is_named_in_the_error():
    with pytest.raises(ValueError, match="policy='gaussian' is not a policy"):
        load_example().policy_head("gaussian", 4, 1, 1.0)


def test_quick_run_improves_the_return():
    example = load_example()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the example runs; restored for the tests after this one
    try:
        run = example.train("fused", seed=0, config=example.QUICK, progress=False)
    finally:
        torch.set_num_threads(threads)
    assert math.isfinite(run["final_eval_return"]) and run["episodes"], run
    assert run["final_eval_return"] > run["initial_eval_return"] + CLEAR_IMPROVEMENT, run
    assert [step for step, _ in run["episodes"]] == list(range(200, example.QUICK.steps + 1, 200))  # 200-step episodes
