"""Pathwise versus score-function gradients: the textbook claims, closed form beside measured.

    python3 benchmarks/study_estimators.py            # full run (under a minute on 2 cores)
    python3 benchmarks/study_estimators.py --quick    # CI-sized
    python3 benchmarks/study_estimators.py --out DIR  # default benchmarks/results/estimators

Writes estimators.md (all tables) and three PNG plots. Four studies, all with
fixed seeds (the library's stream is the same on every machine):

1. linear f = a z + b: the pathwise location gradient has variance exactly 0,
   the score function's does not (closed forms for every entry);
2. f = z^2 against sigma: both estimators' variances in closed form, the
   score function's growth and the pathwise shrinkage as sigma -> 0;
3. VAE-like f (a small fixed decoder's Bernoulli log-likelihood): the variance
   ratio score function / pathwise, with and without baselines;
4. Gumbel-Softmax: bias (against the exact gradient, by enumeration) and
   variance of the soft and the straight-through (hard) estimators against
   the temperature, with the score function as the unbiased reference.

The closed forms are derived in docs/estimators.md; tests/test_estimators.py
checks them by exact moment algebra and against Monte Carlo.
"""
import argparse
import math
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))  # plotting.py, also when this file is loaded by path (the tests)

from plotting import line_chart  # noqa: E402
from rtrick_ops import estimators as est  # noqa: E402

DTYPE = torch.float64
ESTIMATORS = (("pathwise", "pathwise"), ("score_function", "score function"))
PARAMETERS = (("mu", "mu"), ("scale_param", "log_sigma"))


# ----------------------------------------------------------- closed forms
# z = mu + sigma * eps, eps ~ N(0, 1); the scale parameter s gives sigma(s)
# with derivative dsigma (= sigma for log_sigma). Per-draw estimates:
#   pathwise:       f'(z),            f'(z) * dsigma * eps
#   score function: f(z) * eps/sigma, f(z) * (dsigma/sigma) * (eps^2 - 1)
# Each function returns {(estimator, parameter): (E[estimate], Var[estimate])}.

def linear_closed_forms(a, b, mu, sigma, dsigma):
    """f = a z + b. With c = f(mu) = a mu + b; the exact gradient is (a, 0)."""
    c, ratio = a * mu + b, dsigma / sigma
    return {("pathwise", "mu"): (a, 0.0),
            ("pathwise", "scale_param"): (0.0, a * a * dsigma * dsigma),
            ("score_function", "mu"): (a, c * c / sigma**2 + 2 * a * a),
            ("score_function", "scale_param"): (0.0, ratio * ratio * (2 * c * c + 10 * a * a * sigma**2))}


def quadratic_closed_forms(mu, sigma, dsigma):
    """f = z^2, E[f] = mu^2 + sigma^2; the exact gradient is (2 mu, 2 sigma dsigma)."""
    ratio = dsigma / sigma
    return {("pathwise", "mu"): (2 * mu, 4 * sigma**2),
            ("pathwise", "scale_param"): (2 * sigma * dsigma, 4 * dsigma**2 * (mu**2 + 2 * sigma**2)),
            ("score_function", "mu"): (2 * mu, mu**4 / sigma**2 + 14 * mu**2 + 15 * sigma**2),
            ("score_function", "scale_param"): (2 * sigma * dsigma,
                                                ratio * ratio * (2 * mu**4 + 60 * mu**2 * sigma**2 + 74 * sigma**4))}


def draw_statistics(draws):
    """Mean, its standard error, the unbiased variance and its standard error, of 1-D per-draw values.

    The variance's standard error uses Var(s^2) ~ (m4 - s^4) / K with the
    sample fourth central moment m4.
    """
    draws = draws.double()
    count, mean = draws.numel(), draws.mean()
    variance = draws.var(correction=1)
    fourth = ((draws - mean) ** 4).mean()
    return (float(mean), float((variance / count).sqrt()), float(variance),
            float(((fourth - variance**2).clamp_min(0) / count).sqrt()))


def z_score(measured, expected, stderr):
    """(measured - expected) / stderr; 0 when both agree exactly."""
    if measured == expected:
        return 0.0
    return (measured - expected) / stderr if stderr > 0 else math.inf


def measure_closed_form_case(f, mu, log_sigma, closed_forms, num_draws, seed):
    """Rows (estimator, parameter, exact mean, measured mean, se, closed-form var, measured var, se).

    mu and log_sigma are scalars; closed_forms maps (estimator, parameter) to (mean, variance).
    """
    q = est.normal(torch.tensor(mu, dtype=DTYPE), torch.tensor(log_sigma, dtype=DTYPE))
    grads = est.per_draw_gradients(f, q, num_draws, seed=seed)
    rows = []
    for estimator, _ in ESTIMATORS:
        for parameter, _ in PARAMETERS:
            exact_mean, exact_variance = closed_forms[(estimator, parameter)]
            mean, mean_se, variance, variance_se = draw_statistics(getattr(grads, estimator)[parameter])
            rows.append((estimator, parameter, exact_mean, mean, mean_se, exact_variance, variance, variance_se))
    return rows


# ------------------------------------------------------------------ studies

def study_linear(num_draws):
    a, b, mu, sigma = 2.0, 1.0, 0.5, 0.8
    rows = measure_closed_form_case(lambda z: a * z + b, mu, math.log(sigma),
                                    linear_closed_forms(a, b, mu, sigma, sigma), num_draws, seed=1)
    return dict(a=a, b=b, mu=mu, sigma=sigma, rows=rows)


def study_quadratic(num_draws, sigmas):
    mu = 1.0
    cases = []
    for index, sigma in enumerate(sigmas):
        rows = measure_closed_form_case(lambda z: z * z, mu, math.log(sigma), quadratic_closed_forms(mu, sigma, sigma),
                                        num_draws, seed=100 + index)
        cases.append((sigma, rows))
    return dict(mu=mu, cases=cases)


class BernoulliDecoder(torch.nn.Module):
    """A fixed random 2-layer MLP from a latent vector to pixel logits."""

    def __init__(self, latent, hidden, pixels, generator):
        super().__init__()
        self.first = torch.nn.Linear(latent, hidden).to(DTYPE)
        self.second = torch.nn.Linear(hidden, pixels).to(DTYPE)
        with torch.no_grad():
            for layer, fan_in in ((self.first, latent), (self.second, hidden)):
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator, dtype=DTYPE) * 2 / fan_in**0.5)
                layer.bias.copy_(torch.randn(layer.bias.shape, generator=generator, dtype=DTYPE) * 0.5)
        self.requires_grad_(False)

    def forward(self, z):
        return self.second(torch.tanh(self.first(z)))


def fit_posterior(log_likelihood, latent, steps, generator_seed):
    """mu, log_sigma maximising the ELBO of q = N(mu, sigma^2) under the prior N(0, I) (pathwise, Adam)."""
    mu = torch.zeros(latent, dtype=DTYPE, requires_grad=True)
    log_sigma = torch.zeros(latent, dtype=DTYPE, requires_grad=True)
    optimizer = torch.optim.Adam([mu, log_sigma], lr=0.05)
    for step in range(steps):
        q = est.normal(mu, log_sigma)
        reconstruction = est.pathwise_surrogate(log_likelihood, q, 64, seed=generator_seed + step).mean()
        kl = 0.5 * (mu * mu + torch.exp(2 * log_sigma) - 2 * log_sigma - 1).sum()
        optimizer.zero_grad()
        (kl - reconstruction).backward()
        optimizer.step()
    return mu.detach(), log_sigma.detach()


def study_vae(num_draws, fit_steps):
    latent, hidden, pixels = 8, 32, 64
    generator = torch.Generator().manual_seed(7)
    decoder = BernoulliDecoder(latent, hidden, pixels, generator)
    with torch.no_grad():
        true_latent = torch.randn(latent, generator=generator, dtype=DTYPE)
        target = torch.bernoulli(torch.sigmoid(decoder(true_latent)), generator=generator)

    def log_likelihood(z):
        """log p(target | z) per draw: Bernoulli over the pixels."""
        logits = decoder(z)
        return -torch.nn.functional.binary_cross_entropy_with_logits(
            logits, target.expand_as(logits), reduction="none").sum(-1)

    points = [("prior N(0, I)", torch.zeros(latent, dtype=DTYPE), torch.zeros(latent, dtype=DTYPE)),
              ("fitted posterior", *fit_posterior(log_likelihood, latent, fit_steps, generator_seed=10_000))]
    baselines = [("none", lambda: None), ("moving average", est.MovingAverageBaseline),
                 ("leave-one-out", est.LeaveOneOutBaseline),
                 ("regression control variate", est.RegressionControlVariate)]
    results = []
    for point_name, mu, log_sigma in points:
        q = est.normal(mu, log_sigma)
        for baseline_name, make_baseline in baselines:
            report = est.compare_estimators(log_likelihood, q, num_draws, baseline=make_baseline(), seed=3)
            ratios = torch.cat([ratio.flatten() for ratio in report.variance_ratio.values()])
            results.append(dict(point=point_name, baseline=baseline_name,
                                sigma_range=(float(log_sigma.exp().min()), float(log_sigma.exp().max())),
                                pathwise=report.pathwise.total_variance, score=report.score_function.total_variance,
                                ratio=report.total_variance_ratio, median_ratio=float(ratios.median()),
                                min_ratio=float(ratios.min()), max_ratio=float(ratios.max())))
    return dict(latent=latent, hidden=hidden, pixels=pixels, num_draws=num_draws, results=results)


def exact_categorical_gradient(f, logits):
    """grad_logits E_{y ~ Cat(softmax(logits))}[f(y)], by enumerating the one-hot outcomes."""
    logits = logits.detach().clone().requires_grad_()
    outcomes = torch.eye(logits.shape[-1], dtype=logits.dtype)
    expectation = (torch.softmax(logits, -1) * f(outcomes)).sum()
    (gradient,) = torch.autograd.grad(expectation, logits)
    return gradient


def study_gumbel(num_draws, taus):
    logits = torch.tensor([1.2, 0.4, 0.0, -0.3, -1.1], dtype=DTYPE)
    weights = torch.tensor([1.0, -2.0, 3.0, 0.5, -1.0], dtype=DTYPE)
    target = torch.tensor([0.1, 0.6, 0.05, 0.2, 0.05], dtype=DTYPE)
    functions = [("linear", "f(y) = w . y", lambda y: y @ weights),
                 ("nonlinear", "f(y) = sum_i (y_i - t_i)^2", lambda y: ((y - target) ** 2).sum(-1))]
    studies = []
    for key, label, f in functions:
        exact = exact_categorical_gradient(f, logits)
        rows = []
        for tau in taus:
            row = dict(tau=tau)
            for hard in (False, True):
                report = est.compare_estimators(f, est.gumbel_softmax_relaxation(logits, tau=tau, hard=hard),
                                                num_draws, seed=5)
                name = "hard" if hard else "soft"
                row[name + "_bias"] = float((report.pathwise.mean["logits"] - exact).norm())
                row[name + "_variance"] = report.pathwise.total_variance
                row[name + "_floor"] = math.sqrt(report.pathwise.total_variance / num_draws)
                # The score-function estimate scores the argmax of the same Gumbel draws: tau plays no part.
                row["score_bias"] = float((report.score_function.mean["logits"] - exact).norm())
                row["score_variance"] = report.score_function.total_variance
                row["score_floor"] = math.sqrt(report.score_function.total_variance / num_draws)
            rows.append(row)
        studies.append(dict(key=key, label=label, exact=exact.tolist(), rows=rows))
    return dict(logits=logits.tolist(), weights=weights.tolist(), target=target.tolist(), num_draws=num_draws,
                studies=studies)


# ------------------------------------------------------------------ output

def fmt(value):
    if value == 0:
        return "0"
    if math.isinf(value) or math.isnan(value):
        return str(value)
    return f"{value:.4g}" if 1e-3 <= abs(value) < 1e5 else f"{value:.3e}"


def closed_form_table(rows):
    lines = ["| estimator | parameter | exact gradient | measured mean ± se | z | variance, closed form "
             "| variance, measured ± se | z |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    names, parameters = dict(ESTIMATORS), dict(PARAMETERS)
    for estimator, parameter, exact_mean, mean, mean_se, exact_variance, variance, variance_se in rows:
        lines.append(f"| {names[estimator]} | {parameters[parameter]} | {fmt(exact_mean)} "
                     f"| {fmt(mean)} ± {fmt(mean_se)} | {z_score(mean, exact_mean, mean_se):+.2f} "
                     f"| {fmt(exact_variance)} | {fmt(variance)} ± {fmt(variance_se)} "
                     f"| {z_score(variance, exact_variance, variance_se):+.2f} |")
    return lines


def quadratic_table(quadratic):
    header = ["sigma"] + [f"{short} {parameters}: closed / measured" for short, parameters in
                          (("PW", "mu"), ("PW", "log_sigma"), ("SF", "mu"), ("SF", "log_sigma"))] + ["max abs z"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
    for sigma, rows in quadratic["cases"]:
        cells = [f"{fmt(row[5])} / {fmt(row[6])}" for row in rows]
        worst = max(max(abs(z_score(row[3], row[2], row[4])), abs(z_score(row[6], row[5], row[7]))) for row in rows)
        lines.append(f"| {fmt(sigma)} | " + " | ".join(cells) + f" | {worst:.2f} |")
    return lines


def plot_quadratic(quadratic, path):
    """Measured variances against sigma (one panel per parameter) and their ratio to the closed forms."""
    log_sigmas = [math.log10(sigma) for sigma, _ in quadratic["cases"]]
    panels, agreement = [], []
    for parameter_index, (parameter, label) in enumerate(PARAMETERS):
        series = []
        for estimator_index, (estimator, name) in enumerate(ESTIMATORS):
            row_index = 2 * estimator_index + parameter_index
            measured = [rows[row_index][6] for _, rows in quadratic["cases"]]
            closed = [rows[row_index][5] for _, rows in quadratic["cases"]]
            series.append((name, log_sigmas, [math.log10(value) for value in measured]))
            agreement.append((f"{name}, {label}", log_sigmas, [m / c for m, c in zip(measured, closed)]))
        panels.append({"title": f"gradient in {label}", "x_label": "log10(sigma)",
                       "y_label": "log10(variance)", "series": series})
    panels.append({"title": "measured / closed form", "x_label": "log10(sigma)", "y_label": "variance ratio",
                   "series": agreement})
    line_chart(path, panels, y_from_zero=False,
               title=f"f = z^2, mu = {quadratic['mu']:g}: variance per draw, measured")


def plot_gumbel(study, path):
    log_taus = [math.log10(row["tau"]) for row in study["rows"]]
    series_names = (("soft", "soft Gumbel-Softmax"), ("hard", "straight-through (hard)"), ("score", "score function"))
    panels = []
    for quantity, label in (("bias", "log10(bias)"), ("variance", "log10(variance)")):
        series = [(name, log_taus, [math.log10(max(row[f"{key}_{quantity}"], 1e-300)) for row in study["rows"]])
                  for key, name in series_names]
        panels.append({"title": f"{quantity}, {study['key']} f", "x_label": "log10(tau)", "y_label": label,
                       "series": series})
    coincide = all(row["soft_bias"] == row["hard_bias"] and row["soft_variance"] == row["hard_variance"]
                   for row in study["rows"])
    line_chart(path, panels, y_from_zero=False,
               title=f"Gumbel-Softmax, {study['label']}" + (" (soft and hard coincide)" if coincide else ""))


def gumbel_table(study):
    lines = ["| tau | soft: bias | soft: variance | hard (ST): bias | hard (ST): variance "
             "| score function: bias | score function: variance |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for row in study["rows"]:
        lines.append(f"| {fmt(row['tau'])} | {fmt(row['soft_bias'])} (±{fmt(row['soft_floor'])}) "
                     f"| {fmt(row['soft_variance'])} | {fmt(row['hard_bias'])} (±{fmt(row['hard_floor'])}) "
                     f"| {fmt(row['hard_variance'])} | {fmt(row['score_bias'])} (±{fmt(row['score_floor'])}) "
                     f"| {fmt(row['score_variance'])} |")
    return lines


def write_markdown(path, linear, quadratic, vae, gumbel, settings, elapsed):
    lines = ["# Pathwise versus score-function gradient estimators", "",
             f"`python3 benchmarks/study_estimators.py{' --quick' if settings['quick'] else ''}`, "
             f"{datetime.now(timezone.utc).strftime('%Y-%m-%dT%H:%M UTC')}, torch {torch.__version__}, "
             f"{platform.machine()}, {torch.get_num_threads()} threads, {elapsed:.0f} s. float64, fixed seeds. "
             "Derivations: [docs/estimators.md](../../../docs/estimators.md).", "",
             "Notation: z = mu + sigma eps, eps ~ N(0, 1), parameters (mu, log_sigma). \"z\" columns are "
             "(measured - closed form) / standard error; the variance's standard error is sqrt((m4 - s^4) / K) "
             "with the sample fourth central moment m4.", "",
             f"## 1. Linear f = {linear['a']:g} z + {linear['b']:g}, "
             f"mu = {linear['mu']:g}, sigma = {linear['sigma']:g}",
             "", f"{settings['linear_draws']} draws.", ""]
    lines += closed_form_table(linear["rows"])
    pathwise_mu = next(row for row in linear["rows"] if row[:2] == ("pathwise", "mu"))
    lines += ["", f"The pathwise location gradient is a for every draw: its measured variance is {fmt(pathwise_mu[6])} "
              "(exactly zero). The score function's is c^2/sigma^2 + 2a^2 with c = f(mu). The scale gradient is "
              "not zero-variance for either estimator: the pathwise one is a sigma eps (variance a^2 sigma^2), "
              "the score function's variance is 2c^2 + 10 a^2 sigma^2, at least ten times larger.", "",
              f"## 2. Quadratic f = z^2, mu = {quadratic['mu']:g}, against sigma", "",
              f"{settings['quadratic_draws']} draws per sigma. Closed forms (docs/estimators.md): pathwise "
              "Var_mu = 4 sigma^2, Var_log_sigma = 4 sigma^2 (mu^2 + 2 sigma^2); score function "
              "Var_mu = mu^4/sigma^2 + 14 mu^2 + 15 sigma^2, Var_log_sigma = 2 mu^4 + 60 mu^2 sigma^2 + 74 sigma^4. "
              "As sigma -> 0 the pathwise variances vanish while the score function's mu variance grows like "
              "mu^4/sigma^2 and its log_sigma variance tends to 2 mu^4.", ""]
    lines += quadratic_table(quadratic)
    lines += ["", "![variance against sigma](quadratic_variance.png)", "",
              f"## 3. VAE-like f: log-likelihood of a {vae['pixels']}-pixel binary target under a fixed "
              f"{vae['latent']}-{vae['hidden']}-{vae['pixels']} decoder", "",
              f"{vae['num_draws']} draws, gradients in the {2 * vae['latent']} parameters (mu, log_sigma) of "
              "q = N(mu, diag sigma^2). \"total\" is the summed per-parameter variance (the trace of the "
              "covariance, or K times the per-parameter average); the ratio columns divide the score function's "
              "by the pathwise one's. Baselines apply to the score function only; the moving average and the "
              "regression control variate first learn from one independent warm-up batch.", "",
              "| q at | sigma range | score-function baseline | pathwise total variance "
              "| score-function total variance | ratio of totals | median per-parameter ratio "
              "| min / max per-parameter ratio |",
              "|---|---|---|---:|---:|---:|---:|---|"]
    for result in vae["results"]:
        low, high = result["sigma_range"]
        lines.append(f"| {result['point']} | {fmt(low)} - {fmt(high)} | {result['baseline']} "
                     f"| {fmt(result['pathwise'])} | {fmt(result['score'])} | **{fmt(result['ratio'])}** "
                     f"| {fmt(result['median_ratio'])} | {fmt(result['min_ratio'])} / {fmt(result['max_ratio'])} |")
    lines += ["", "## 4. Gumbel-Softmax against the temperature", "",
              f"Categorical over {len(gumbel['logits'])} classes, logits {gumbel['logits']}; "
              f"{gumbel['num_draws']} draws per temperature, the same Gumbel noise at every temperature. "
              "bias = |mean estimate - exact gradient| (Euclidean, exact by enumerating the classes); in "
              "brackets the Monte-Carlo noise level sqrt(total variance / K), below which a bias is not "
              "resolved. variance = total per-draw variance over the logits. The score function scores the "
              "exact categorical sample (argmax of the same Gumbel draw), so it does not depend on tau and is "
              "unbiased.", ""]
    for study in gumbel["studies"]:
        lines += [f"### {study['label']}", "", f"exact gradient: {[round(value, 5) for value in study['exact']]}", ""]
        lines += gumbel_table(study)
        lines += ["", f"![Gumbel-Softmax bias and variance, {study['key']} f](gumbel_{study['key']}.png)", ""]
    lines += ["For a linear f the gradient in y is constant, so the straight-through estimator's backward equals the "
              "soft one's and the two rows coincide; they differ for the nonlinear f, where the forward value "
              "(one-hot versus relaxed) enters the gradient.", ""]
    Path(path).write_text("\n".join(lines))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI-sized run (seconds)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "estimators"), help="output folder")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = dict(quick=args.quick,
                    linear_draws=2**14 if args.quick else 2**22,
                    quadratic_draws=2**12 if args.quick else 2**20,
                    vae_draws=2**11 if args.quick else 2**16,
                    vae_fit_steps=30 if args.quick else 400,
                    gumbel_draws=2**11 if args.quick else 2**18)
    log_sigmas = [-2, -1, 0, 1] if args.quick else [x / 4 for x in range(-8, 5)]
    started = time.perf_counter()
    linear = study_linear(settings["linear_draws"])
    quadratic = study_quadratic(settings["quadratic_draws"], [10.0**x for x in log_sigmas])
    vae = study_vae(settings["vae_draws"], settings["vae_fit_steps"])
    gumbel = study_gumbel(settings["gumbel_draws"], [0.1, 0.2, 0.5, 1.0, 2.0, 5.0])
    plot_quadratic(quadratic, out / "quadratic_variance.png")
    for study in gumbel["studies"]:
        plot_gumbel(study, out / f"gumbel_{study['key']}.png")
    write_markdown(out / "estimators.md", linear, quadratic, vae, gumbel, settings, time.perf_counter() - started)
    print(f"wrote {out / 'estimators.md'} and 3 plots in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
