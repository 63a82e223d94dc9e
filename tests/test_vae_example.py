"""The VAE example (examples/vae_digits.py): a short run learns, writes its files, and both samplers agree;
and the grayscale image-grid writer it uses."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "vae_digits.py"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The quick run's test ELBO goes from about -535 nats before training to about -113 after it.
CLEAR_IMPROVEMENT_NATS = 100


def load_example():
    spec = importlib.util.spec_from_file_location("vae_digits", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_run_learns_writes_its_files_and_samplers_agree(tmp_path):
    result = subprocess.run([sys.executable, str(EXAMPLE), "--quick", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    for name in ("elbo_curve.png", "reconstructions.png", "samples.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG_SIGNATURE, name

    summary = json.loads((tmp_path / "results.json").read_text())
    fused, plain = summary["results"]
    assert (fused["sampler"], plain["sampler"]) == ("fused", "plain")
    for sampler in (fused, plain):
        assert len(sampler["runs"]) >= 2, "the noise estimate needs several seeds"
        for run in sampler["runs"]:
            assert run["test_elbo"][-1] > run["test_elbo"][0] + CLEAR_IMPROVEMENT_NATS, (sampler["sampler"], run)
        assert sampler["median_step_ms"] > 0 and sampler["peak_rss_bytes"] > 0

    comparison = summary["comparison"]
    assert abs(comparison["difference"]) <= comparison["tolerance"], comparison
    assert "**equal within noise**" in (tmp_path / "comparison.md").read_text()

    # The plain sampler keeps exp(logvar / 2) and the noise for backward; the fused one keeps logvar and
    # its noise too at these sizes (under rt.saved_noise_limit, docs/operators.md "Saved noise"), or
    # logvar and a small key with the limit at 0, and regenerates the noise.
    minibatch_of_codes = summary["config"]["batch_size"] * summary["config"]["latent_dim"] * 4  # float32
    assert plain["saved_bytes_sampler"] == 2 * minibatch_of_codes
    if fused["saved_noise_limit"] * 4 >= minibatch_of_codes:
        assert fused["saved_bytes_sampler"] == 2 * minibatch_of_codes
    else:
        assert minibatch_of_codes <= fused["saved_bytes_sampler"] < minibatch_of_codes + 64


def test_importance_weighted_bound_is_tighter_for_both_samplers():
    """--samples K: K codes per image from one call (sample_shape) give the IWAE bound, above the ELBO."""
    example = load_example()
    torch.manual_seed(0)
    model = example.DigitVAE()
    _, test_images = example.load_digit_splits()
    with torch.no_grad():
        for sample in example.SAMPLERS.values():
            single = example.elbo(model, test_images, sample, num_samples=1)
            weighted = example.elbo(model, test_images, sample, num_samples=64)
            assert single.shape == weighted.shape == (len(test_images),)
            assert torch.isfinite(single).all() and torch.isfinite(weighted).all()
            assert weighted.mean() > single.mean() + 1.0  # an untrained model's ELBO is loose


def load_plotting():
    pytest.importorskip("matplotlib")
    spec = importlib.util.spec_from_file_location("plotting", ROOT / "benchmarks" / "plotting.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_image_grid_writes_the_pixels_it_is_given(tmp_path):
    """The example's grayscale grid (benchmarks/plotting.py image_grid): layout, scaling, clipping, empty cells."""
    from matplotlib.image import imread

    path = tmp_path / "grid.png"
    load_plotting().image_grid(path, [[[0.0, 1.0], [0.5, 2.0]], None, [[1.0, 1.0], [1.0, -1.0]]], rows=1, cols=3,
                               scale=2, padding=1, padding_value=0.25)
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    pixels = imread(path)
    assert pixels.shape == (5 + 1, 3 * 5 + 1, 4) and pixels.dtype.name == "float32"  # RGBA, one pixel per cell
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 0] == pixels[..., 2]).all()  # gray
    gray = (pixels[..., 0] * 255).round().astype(int).tolist()
    assert gray[1][1:5] == [0, 0, 255, 255]  # first image, top row, each pixel doubled
    assert gray[3][1:5] == [128, 128, 255, 255]  # 0.5 is gray 128; 2.0 is clipped to white
    assert gray[1][5:11] == [64] * 6  # padding and the empty cell: gray 0.25
    assert gray[4][11:15] == [255, 255, 0, 0]  # third image; -1.0 is clipped to black
    assert gray[0] == [64] * (3 * 5 + 1)  # top padding


def test_image_grid_rejects_images_that_do_not_fit(tmp_path):
    plotting = load_plotting()
    with pytest.raises(ValueError, match="images: need 1 to 2 images"):
        plotting.image_grid(tmp_path / "grid.png", [[[0.0]]] * 3, rows=1, cols=2)
    with pytest.raises(ValueError, match="images: all must be 2-D and of the same size"):
        plotting.image_grid(tmp_path / "grid.png", [[[0.0]], [[0.0, 1.0]]], rows=1, cols=2)
