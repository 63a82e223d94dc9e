"""A variational autoencoder on scikit-learn's 8x8 digits, sampling its latent code with rtrick_ops.

The encoder maps an image to the mean and log-variance of a Gaussian over an
8-dimensional code; `rt.normal_rsample(mu, logvar, scale="logvar")` draws the
code in one fused kernel, whose backward regenerates the noise instead of
keeping it; the decoder maps the code back to pixel probabilities. Training
maximizes the evidence lower bound (ELBO) on log p(x), in nats per image:

    ELBO(x) = E_q(z|x)[log p(x|z)] - KL(q(z|x) || N(0, I))

The same training runs again with the plain torch expression
`mu + exp(0.5 * logvar) * randn_like(mu)` from the same seeds (same
initialization, same minibatch order; only the noise differs), and the two
runs are compared: final ELBO, step time, memory.

    python3 examples/vae_digits.py            # full run, about a minute on 2 cores
    python3 examples/vae_digits.py --quick    # a few epochs (what the test runs)

It writes elbo_curve.png, reconstructions.png, samples.png, comparison.md and
results.json into --out. docs/vae_example.md explains the results.
"""
import argparse
import concurrent.futures
import dataclasses
import json
import math
import multiprocessing
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
from sklearn.datasets import load_digits
from torch import nn

import rtrick_ops as rt

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # the shared plotting.py
from plotting import image_grid, line_chart  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "vae_digits"

# ---------------------------------------------------------------------------------------------
# Data: 1797 digits that ship with scikit-learn, so nothing is downloaded.
# ---------------------------------------------------------------------------------------------

IMAGE_SIDE = 8
PIXELS = IMAGE_SIDE * IMAGE_SIDE
# Each pixel counts the "on" pixels of a 4x4 block of the original 32x32 bitmap, so it is a
# whole number from 0 to 16. That makes Binomial(16, p) the natural likelihood (see below).
PIXEL_LEVELS = 16
TEST_FRACTION = 0.2
SPLIT_SEED = 0  # fixed apart from --seed, so that every run is tested on the same digits


def load_digit_splits():
    """(train, test) images as float32 tensors of shape (n, 64), scaled to [0, 1]."""
    images = torch.tensor(load_digits().data, dtype=torch.float32) / PIXEL_LEVELS
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(SPLIT_SEED))
    test_count = round(TEST_FRACTION * len(images))
    return images[order[test_count:]], images[order[:test_count]]


# ---------------------------------------------------------------------------------------------
# Model: MLP encoder -> Gaussian head (mu, logvar) -> sampler -> MLP decoder.
# ---------------------------------------------------------------------------------------------


class DigitVAE(nn.Module):
    def __init__(self, latent_dim=8, hidden_dim=256):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(PIXELS, hidden_dim), nn.ReLU())
        self.mu_head = nn.Linear(hidden_dim, latent_dim)
        self.logvar_head = nn.Linear(hidden_dim, latent_dim)
        self.decoder = nn.Sequential(nn.Linear(latent_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, PIXELS))

    def encode(self, images):
        hidden = self.encoder(images)
        return self.mu_head(hidden), self.logvar_head(hidden)

    def decode(self, z):
        """Logits of the pixel probabilities."""
        return self.decoder(z)


# The two ways to draw z ~ N(mu, exp(logvar)), num_samples codes per image: shape (num_samples, *mu.shape).

def fused_sample(mu, logvar, num_samples):
    return rt.normal_rsample(mu, logvar, scale="logvar", sample_shape=(num_samples,))


def plain_sample(mu, logvar, num_samples):
    noise = torch.randn((num_samples, *mu.shape), dtype=mu.dtype, device=mu.device)  # randn_like, K times
    return mu + torch.exp(0.5 * logvar) * noise


SAMPLERS = {"fused": fused_sample, "plain": plain_sample}

# ---------------------------------------------------------------------------------------------
# Objective.
# ---------------------------------------------------------------------------------------------


def kl_to_standard_normal(mu, logvar):
    """KL(N(mu, exp(logvar)) || N(0, I)) in closed form, summed over the latent dimensions.

    Plain torch, and the same function for both samplers, so that the comparison isolates the
    sampler. rt.normal_kl(mu, logvar, scale="logvar").sum(-1) computes the same value in one
    fused pass (tests/test_family.py checks it against torch.distributions.kl_divergence), and
    rt.normal_rsample_and_kl draws z and the KL from one read of mu and logvar.
    """
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)


def log_likelihood(logits, images):
    """log p(x | z) per image: each pixel's count out of 16 is Binomial(16, sigmoid(logit)).

    This is the Bernoulli likelihood of the 16 bitmap pixels behind each 8x8 pixel
    (16 times the Bernoulli cross-entropy of the [0, 1] intensity, plus log C(16, count)),
    and unlike a Bernoulli on gray levels it is a normalized distribution over the values the
    data can take, so the ELBO is a true lower bound on log p(x), in nats.
    """
    # The counts are whole numbers by construction; argument validation would cost ~8% of a step.
    likelihood = torch.distributions.Binomial(PIXEL_LEVELS, logits=logits, validate_args=False)
    return likelihood.log_prob(images * PIXEL_LEVELS).sum(-1)


def gaussian_log_density(z, mu, logvar):
    """log N(z; mu, exp(logvar)), summed over the latent dimensions."""
    return (-0.5 * ((z - mu).pow(2) / logvar.exp() + logvar + math.log(2 * math.pi))).sum(-1)


def elbo(model, images, sample, num_samples=1):
    """The per-image lower bound on log p(x) in nats, from num_samples codes per image.

    One code: the ELBO with the KL term in closed form (lower variance than estimating it).
    K > 1 codes: the importance-weighted bound log mean_k p(x, z_k) / q(z_k | x) (IWAE),
    which is tighter; all K codes come from one call through sample_shape.
    """
    mu, logvar = model.encode(images)
    z = sample(mu, logvar, num_samples)
    log_p_x_given_z = log_likelihood(model.decode(z), images)  # (num_samples, batch)
    if num_samples == 1:
        return log_p_x_given_z[0] - kl_to_standard_normal(mu, logvar)
    zeros = torch.zeros_like(mu)
    log_weights = log_p_x_given_z + gaussian_log_density(z, zeros, zeros) - gaussian_log_density(z, mu, logvar)
    return torch.logsumexp(log_weights, dim=0) - math.log(num_samples)


# ---------------------------------------------------------------------------------------------
# Training.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class RunConfig:
    epochs: int
    seeds: list
    batch_size: int = 64
    learning_rate: float = 2e-3
    latent_dim: int = 8
    hidden_dim: int = 256
    num_samples: int = 1
    threads: int = 1


def train_one_seed(sample, seed, config, train_images, test_images, progress):
    """Train one VAE; returns the model, ELBO per epoch and the wall time of every step.

    The seed fixes the initialization (torch's generator) and the minibatch order (a
    generator of its own, so that it does not depend on how much noise the sampler drew).
    """
    torch.manual_seed(seed)
    model = DigitVAE(config.latent_dim, config.hidden_dim)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    batch_order = torch.Generator().manual_seed(seed)

    def test_elbo():
        with torch.no_grad():
            return elbo(model, test_images, sample, config.num_samples).mean().item()

    train_curve, test_curve, step_seconds = [], [test_elbo()], []  # test_curve[0]: before training
    for epoch in range(1, config.epochs + 1):
        epoch_elbos = []
        for batch in torch.randperm(len(train_images), generator=batch_order).split(config.batch_size):
            start = time.perf_counter()
            batch_elbo = elbo(model, train_images[batch], sample, config.num_samples).mean()
            optimizer.zero_grad()
            (-batch_elbo).backward()
            optimizer.step()
            step_seconds.append(time.perf_counter() - start)
            epoch_elbos.append(batch_elbo.item())
        # The train ELBO of an epoch is the mean over its minibatches, as the model was then.
        train_curve.append(statistics.fmean(epoch_elbos))
        test_curve.append(test_elbo())
        progress.update(f"seed {seed} epoch {epoch}/{config.epochs} test ELBO {test_curve[-1]:.1f}")
    return model, {"seed": seed, "train_elbo": train_curve, "test_elbo": test_curve}, step_seconds


def train_sampler(sampler_name, config):
    """Train one model per seed with one sampler and measure it; returns a JSON-able dict.

    With --sampler both this runs in a fresh process per sampler, so that the process's
    peak RSS belongs to this sampler alone.
    """
    torch.set_num_threads(config.threads)
    sample = SAMPLERS[sampler_name]
    train_images, test_images = load_digit_splits()
    peak_rss_before_training = peak_rss_bytes()
    progress = ProgressBar(sampler_name, total=config.epochs * len(config.seeds))
    models, runs, step_seconds = [], [], []
    for seed in config.seeds:
        model, history, seconds = train_one_seed(sample, seed, config, train_images, test_images, progress)
        models.append(model)
        runs.append(history)
        step_seconds += seconds
    progress.close()
    peak_rss = peak_rss_bytes()
    first_model = models[0]  # the one whose images are shown and whose step is measured
    mu, logvar = sampler_inputs(config)
    first_batch = train_images[:config.batch_size]
    return {
        "sampler": sampler_name,
        "runs": runs,
        "median_step_ms": 1e3 * statistics.median(step_seconds),
        "sampler_alone_us": 1e6 * sampler_alone_seconds(sample, config),
        "saved_noise_limit": rt.saved_noise_limit(),
        "saved_bytes_sampler": saved_tensor_bytes(lambda: sample(mu, logvar, config.num_samples)),
        "saved_bytes_step": saved_tensor_bytes(lambda: elbo(first_model, first_batch, sample, config.num_samples),
                                               exclude=first_model.parameters()),
        "peak_rss_bytes": peak_rss,
        "peak_rss_growth_bytes": peak_rss - peak_rss_before_training,
        "reconstructions": reconstructions(first_model, test_images[:RECONSTRUCTED_DIGITS]),
        "samples": decoded_prior_samples(first_model, config.latent_dim),
    }


# ---------------------------------------------------------------------------------------------
# Measurements besides the ELBO.
# ---------------------------------------------------------------------------------------------


def saved_tensor_bytes(forward, exclude=()):
    """Bytes of the distinct storages autograd keeps for backward while forward() runs.

    Counting storages rather than tensors counts views (a transposed weight, a slice) once;
    `exclude` names tensors that live anyway (the parameters), whose storages are not counted.
    """
    excluded = {tensor.untyped_storage().data_ptr() for tensor in exclude}
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in excluded:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        forward()
    return sum(storages.values())


def sampler_inputs(config):
    """A minibatch's mu and logvar, as leaves that require grad."""
    shape = (config.batch_size, config.latent_dim)
    return torch.zeros(shape, requires_grad=True), torch.zeros(shape, requires_grad=True)


def sampler_alone_seconds(sample, config, repeats=500):
    """Median time of the sampler's forward and backward at a training step's shapes."""
    mu, logvar = sampler_inputs(config)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        sample(mu, logvar, config.num_samples).sum().backward()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def peak_rss_bytes():
    """The process's peak resident set size so far (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else 1024 * peak


RECONSTRUCTED_DIGITS = 16
PRIOR_SAMPLES = 48
PRIOR_SAMPLES_SEED = 0  # the same codes for both samplers' models


def pixel_means(logits):
    """The decoder's mean intensity in [0, 1] (expected count / 16), as 8x8 nested lists."""
    return torch.sigmoid(logits).reshape(-1, IMAGE_SIDE, IMAGE_SIDE).tolist()


def reconstructions(model, images):
    """Decoded posterior means: the model's best guess of each image from its code."""
    with torch.no_grad():
        mu, _ = model.encode(images)
        return pixel_means(model.decode(mu))


def decoded_prior_samples(model, latent_dim):
    """New digits: codes z ~ N(0, I) through the decoder."""
    codes = torch.randn(PRIOR_SAMPLES, latent_dim, generator=torch.Generator().manual_seed(PRIOR_SAMPLES_SEED))
    with torch.no_grad():
        return pixel_means(model.decode(codes))


# ---------------------------------------------------------------------------------------------
# Progress bar (stdlib only).
# ---------------------------------------------------------------------------------------------


class ProgressBar:
    """One line redrawn in place on a terminal; otherwise a plain line every 10% (logs, CI)."""

    BAR_WIDTH = 16  # keeps the whole line within 80 columns, so that it does not wrap

    def __init__(self, label, total, stream=sys.stdout):
        self.label, self.total, self.stream = label, total, stream
        self.done, self.start = 0, time.perf_counter()
        self.on_terminal, self.longest_line, self.logged_tenths = stream.isatty(), 0, 0

    def update(self, status):
        self.done += 1
        fraction = self.done / self.total
        elapsed = time.perf_counter() - self.start
        remaining = elapsed / fraction - elapsed
        if self.on_terminal:
            filled = round(self.BAR_WIDTH * fraction)
            bar = "#" * filled + "-" * (self.BAR_WIDTH - filled)
            line = f"{self.label} [{bar}] {fraction:.0%} {status}, {remaining:.0f}s left"
            self.longest_line = max(self.longest_line, len(line))
            self.stream.write("\r" + line.ljust(self.longest_line))  # blanks what a longer line left
            self.stream.flush()
        elif math.floor(10 * self.done / self.total) > self.logged_tenths:
            self.logged_tenths = math.floor(10 * self.done / self.total)
            print(f"{self.label} {fraction:4.0%} {status}, {elapsed:.0f}s so far", file=self.stream, flush=True)

    def close(self):
        if self.on_terminal:
            self.stream.write("\n")
            self.stream.flush()


# ---------------------------------------------------------------------------------------------
# Comparison and reports.
# ---------------------------------------------------------------------------------------------

# The tolerance for "equal within noise" is 3 standard errors of the difference of the two
# samplers' mean final test ELBOs, the standard error coming from the seed-to-seed spread.
# A spread estimated from a few seeds can come out small by chance, so the standard error is
# taken as at least MIN_STANDARD_ERROR_NATS (the full run measures 0.4 to 0.6; docs/vae_example.md).
MIN_STANDARD_ERROR_NATS = 0.5


def final_test_elbos(result):
    return [run["test_elbo"][-1] for run in result["runs"]]


def compare(fused, plain):
    """Is the fused sampler's final test ELBO equal to the plain one's within noise?"""
    fused_finals, plain_finals = final_test_elbos(fused), final_test_elbos(plain)
    difference = statistics.fmean(fused_finals) - statistics.fmean(plain_finals)
    if len(fused_finals) < 2 or len(plain_finals) < 2:  # one seed: no spread, so no noise estimate
        return {"difference": difference, "standard_error": None, "tolerance": None, "agree": None}
    standard_error = math.sqrt(statistics.variance(fused_finals) / len(fused_finals)
                               + statistics.variance(plain_finals) / len(plain_finals))
    tolerance = 3 * max(standard_error, MIN_STANDARD_ERROR_NATS)
    return {"difference": difference, "standard_error": standard_error, "tolerance": tolerance,
            "agree": abs(difference) <= tolerance}


def mean_curve(result, key):
    return [statistics.fmean(values) for values in zip(*(run[key] for run in result["runs"]))]


def sampler_names(results):
    return " vs ".join(result["sampler"] for result in results) + " sampler"


CHART_POINTS = 40  # line_chart marks every point; many more would merge into a band


def write_elbo_curve(path, results, epochs):
    """Train and test ELBO (mean over seeds) at about CHART_POINTS epochs: the whole run, and its second half."""
    stride = max(1, epochs // CHART_POINTS)
    shown = list(range(0, epochs + 1, stride))  # epoch 0: the test ELBO before training
    series = []
    for result in results:
        train, test = mean_curve(result, "train_elbo"), mean_curve(result, "test_elbo")
        series.append((f"{result['sampler']} train", shown[1:], [train[epoch - 1] for epoch in shown[1:]]))
        series.append((f"{result['sampler']} test", shown, [test[epoch] for epoch in shown]))
    half = epochs // 2
    second_half = [(name, [x for x in xs if x >= half], [y for x, y in zip(xs, ys) if x >= half])
                   for name, xs, ys in series]
    axes = {"x_label": "epoch", "y_label": "ELBO (nats per image)"}
    line_chart(path, [{"title": "ELBO per epoch", "series": series, **axes},
                      {"title": f"epochs {half}-{epochs}", "series": second_half, **axes}],
               y_from_zero=False, title=f"VAE on 8x8 digits: {sampler_names(results)} (mean over seeds)")


def ink_on_paper(images):
    """Dark digits on a white background, as they are usually shown."""
    return [[[1.0 - value for value in row] for row in image] for image in images]


def write_reconstructions(path, results, test_images):
    """Row 1: test digits; then one row of reconstructions per sampler's model."""
    originals = test_images[:RECONSTRUCTED_DIGITS].reshape(-1, IMAGE_SIDE, IMAGE_SIDE).tolist()
    rows = [originals] + [result["reconstructions"] for result in results]
    image_grid(path, ink_on_paper([image for row in rows for image in row]), rows=len(rows),
               cols=RECONSTRUCTED_DIGITS, scale=6, padding=2)


SAMPLE_COLUMNS = 12


def write_samples(path, results):
    """PRIOR_SAMPLES decoded codes per sampler's model, the same codes: a block of rows each, an empty row between."""
    images = []
    for result in results:
        images += ink_on_paper(result["samples"]) + [None] * SAMPLE_COLUMNS
    images = images[:-SAMPLE_COLUMNS]
    image_grid(path, images, rows=len(images) // SAMPLE_COLUMNS, cols=SAMPLE_COLUMNS, scale=6, padding=2)


def format_bytes(count):
    return f"{count / 2**20:.1f} MiB" if count >= 2**20 else f"{count / 2**10:.1f} KiB"


def comparison_markdown(results, config, seconds):
    lines = [
        f"# VAE on scikit-learn's 8x8 digits: {sampler_names(results)}",
        "",
        f"{config.epochs} epochs, seeds {', '.join(map(str, config.seeds))} for each sampler (same initialization and "
        f"minibatch order per seed), batch {config.batch_size}, Adam lr {config.learning_rate:g}, latent "
        f"{config.latent_dim}, hidden {config.hidden_dim}, {config.num_samples} sample(s) per image, "
        f"{config.threads} thread(s); torch {torch.__version__}, CPU ISA {rt.cpu_isa()}, {platform.machine()}; "
        f"{seconds:.0f} s in all. ELBO in nats per image (higher is better); the test set is "
        f"{TEST_FRACTION:.0%} of the digits, the same in every run.",
        "",
        "| sampler | final train ELBO | final test ELBO, mean ± std over seeds | per seed | median step | "
        "sampler alone, fwd+bwd | saved for backward: sampler / whole step | peak RSS (growth while training) |",
        "|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    for result in results:
        finals = final_test_elbos(result)
        spread = f"{statistics.stdev(finals):.2f}" if len(finals) > 1 else "n/a"
        lines.append(
            f"| {result['sampler']} | {mean_curve(result, 'train_elbo')[-1]:.2f} | "
            f"{statistics.fmean(finals):.2f} ± {spread} | {', '.join(f'{value:.2f}' for value in finals)} | "
            f"{result['median_step_ms']:.3f} ms | {result['sampler_alone_us']:.0f} µs | "
            f"{format_bytes(result['saved_bytes_sampler'])} / {format_bytes(result['saved_bytes_step'])} | "
            f"{format_bytes(result['peak_rss_bytes'])} (+{format_bytes(result['peak_rss_growth_bytes'])}) |")
    if len(results) == 2:
        verdict = compare(*results)
        line = f"Fused minus plain final test ELBO: **{verdict['difference']:+.2f} nats**"
        if verdict["agree"] is None:
            line += "; one seed per sampler gives no noise estimate (use --repeats 2 or more)."
        else:
            line += (f", standard error {verdict['standard_error']:.2f} (from the seed-to-seed spread); tolerance "
                     f"3 × max(standard error, {MIN_STANDARD_ERROR_NATS}) = {verdict['tolerance']:.2f} nats: "
                     + ("**equal within noise**." if verdict["agree"] else "**NOT equal within noise**."))
        lines += ["", line]
    lines += [
        "",
        "How to read the columns:",
        "",
        "- *median step*: forward, backward and Adam update of one minibatch, median over every step of every "
        "seed, timed in this run.",
        "- *sampler alone*: the sampling call and its backward at a step's shapes, median of 500 calls after "
        "training, in the same process.",
        "- *saved for backward*: bytes of the distinct tensor storages autograd keeps between forward and "
        "backward (torch.autograd.graph.saved_tensors_hooks), for the sampling call alone and for the whole "
        "ELBO of one minibatch, parameters excluded. Deterministic. The plain sampler keeps "
        "exp(logvar / 2) and the noise. The fused one keeps logvar and its float32 noise on a CPU, for calls of "
        f"up to rt.saved_noise_limit() = {results[0].get('saved_noise_limit', 'the default')} elements, so its "
        "backward reads the noise instead of generating it again (docs/operators.md, \"Saved noise\"); above "
        "the limit, and on a GPU, it keeps logvar and a 16-byte key, and regenerates the noise.",
        "- *peak RSS*: ru_maxrss of the process that trained that sampler (a fresh process per sampler), and "
        "how much it rose during training. It is dominated by torch and scikit-learn themselves and by the "
        "allocator, so differences of a few KiB in saved tensors do not show in it.",
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Command line.
# ---------------------------------------------------------------------------------------------


def run_in_fresh_process(function, *args):
    """function(*args) in a new Python process, so that its peak memory is its own."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(function, *args).result()


FULL_RUN_EPOCHS = 200  # about a minute for both samplers on 2 cores; the test ELBO has flattened by then
QUICK_RUN_EPOCHS = 20  # the test ELBO has risen from about -535 to about -113 nats by then


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sampler", choices=["fused", "plain", "both"], default="both",
                        help="which sampler to train with; both trains each in its own process and compares them")
    parser.add_argument("--epochs", type=positive_int,
                        help=f"epochs per model (default {FULL_RUN_EPOCHS}; {QUICK_RUN_EPOCHS} with --quick)")
    parser.add_argument("--quick", action="store_true", help="a short run, for CI")
    parser.add_argument("--seed", type=int, default=0, help="first seed; seeds seed .. seed+repeats-1 are used")
    parser.add_argument("--repeats", type=positive_int, default=4, help="seeds per sampler, to measure the noise (default 4)")
    parser.add_argument("--samples", type=positive_int, default=1,
                        help="codes per image: 1 trains the ELBO, K > 1 the importance-weighted bound (IWAE)")
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="torch threads (default 1: the model is too small to gain from more)")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"output folder (default {DEFAULT_OUT}, the committed results; --quick: its quick/)")
    args = parser.parse_args(argv)
    if args.out is None:  # a quick run does not overwrite the committed results
        args.out = DEFAULT_OUT / "quick" if args.quick else DEFAULT_OUT
    if args.epochs is None:
        args.epochs = QUICK_RUN_EPOCHS if args.quick else FULL_RUN_EPOCHS
    return args


def main(argv=None):
    args = parse_args(argv)
    config = RunConfig(epochs=args.epochs, seeds=list(range(args.seed, args.seed + args.repeats)),
                       num_samples=args.samples, threads=args.threads)
    start = time.perf_counter()
    if args.sampler == "both":
        results = [run_in_fresh_process(train_sampler, name, config) for name in SAMPLERS]
    else:
        results = [train_sampler(args.sampler, config)]
    seconds = time.perf_counter() - start

    args.out.mkdir(parents=True, exist_ok=True)
    _, test_images = load_digit_splits()
    write_elbo_curve(args.out / "elbo_curve.png", results, config.epochs)
    write_reconstructions(args.out / "reconstructions.png", results, test_images)
    write_samples(args.out / "samples.png", results)
    markdown = comparison_markdown(results, config, seconds)
    (args.out / "comparison.md").write_text(markdown)
    summary = {"config": dataclasses.asdict(config), "seconds": seconds,
               "comparison": compare(*results) if len(results) == 2 else None,
               "results": [{key: value for key, value in result.items() if key not in ("reconstructions", "samples")}
                           for result in results]}
    (args.out / "results.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(markdown)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
