"""Modules for the common reparameterized patterns, each a drop-in for the few
lines it replaces.

    head = GaussianLatentHead(256, 16)           # VAE encoder head
    z, kl = head(features)                       # z ~ q(z|x), KL(q || N(0, I)) per example

    policy = GaussianPolicyHead(256, 6)          # SAC-style squashed Gaussian policy
    action, log_prob = policy(features)

    layer = BayesianLinear(64, 10, mode="local") # Bayes by backprop
    logits = layer(x, sample_shape=(8,))         # 8 weight samples per batch, x not expanded
    loss = nll + layer.kl() / num_examples
"""
import math

import torch
from torch import nn
from torch.nn import functional as F

from ._math import LOG_SQRT_2PI, smallest_positive, softplus
from ._backends import BACKENDS
from ._checks import (HALF_DTYPES, check_bool, check_choice, check_count, check_param, check_real,
                      check_sample_shape, holds_values)
from ._random import make_rng_state, substreams
from .normal import NORMAL_RSAMPLE, draw_normal, normal_kl, normal_rsample_and_kl, normal_rsample_and_log_prob

__all__ = ["GaussianLatentHead", "GaussianPolicyHead", "BayesianLinear", "BAYESIAN_LINEAR_MODES",
           "gaussian_kl_to_standard"]


def gaussian_kl_to_standard(mu, log_sigma):
    """KL(N(mu, sigma^2) || N(0, 1)) elementwise, with sigma = exp(log_sigma): rtrick_ops.normal_kl.

    No log of sigma is taken and sigma^2 - 1 - 2 log(sigma) is evaluated without
    cancellation near sigma = 1; finite for any log_sigma whose exp(2 x) does
    not overflow.
    """
    return normal_kl(mu, log_sigma, scale="log_sigma")


class GaussianLatentHead(nn.Module):
    """features -> (mu, log_sigma) -> z = mu + exp(log_sigma) * eps, and the KL to N(0, I).

    Replaces the usual
        mu, logvar = self.fc_mu(h), self.fc_logvar(h)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        kl = -0.5 * (1 + logvar - mu**2 - logvar.exp()).sum(-1)
    with one fused kernel that reads mu and log_sigma once and writes z and the
    KL (rtrick_ops.normal_rsample_and_kl). `sample_shape=(K,)` in forward draws
    K latents per example (IWAE) in the same launch.
    """

    def __init__(self, in_features, latent_features, bias=True):
        super().__init__()
        in_features = check_count(in_features, "in_features")
        latent_features = check_count(latent_features, "latent_features")
        self.to_params = nn.Linear(in_features, 2 * latent_features, bias=bias)
        self.latent_features = latent_features

    def forward(self, features, sample_shape=(), seed=None, generator=None):
        """(z, kl) for features of shape (..., in_features): z of shape sample_shape + (..., latent_features),
        kl of shape (..., latent_features) summed over its last dim, (...). `seed=int` gives the same z on
        every call; otherwise the key comes from `generator` or torch's default generator (one draw a call)."""
        mu, log_sigma = self.to_params(features).chunk(2, dim=-1)
        # log_sigma is the layer's output: finite unless it overflowed, and a -inf there (sigma = 0) shows as an
        # infinite KL. A value check would cost a pass and, on a GPU, a sync per step for nothing.
        z, kl = normal_rsample_and_kl(mu, log_sigma, scale="log_sigma", sample_shape=sample_shape, seed=seed,
                                      generator=generator, validate_args=False)
        return z, kl.sum(-1)


class GaussianPolicyHead(nn.Module):
    """features -> squashed Gaussian action and its log-probability (SAC).

    action = tanh(mu + sigma * eps) * action_scale + action_bias, with log sigma clamped to
    [log_std_min, log_std_max]; action_scale is a positive number or one per
    action dimension ((high - low) / 2 of an environment's box), action_bias a finite number or one per
    dimension ((high + low) / 2; 0 for a box symmetric about 0). The sample u and its Gaussian log-density come
    from one fused kernel (rtrick_ops.normal_rsample_and_log_prob: from eps
    itself, exact where sigma is tiny); log_prob adds the tanh change of
    variables, computed stably as 2 * (log 2 - u - softplus(-2u)).

    action_scale and action_bias describe the environment, not learned weights: they are not in state_dict
    (whose keys are to_params'), so a policy loaded from one needs the same action_scale and action_bias passed
    to its constructor. copy.deepcopy, pickle and torch.save of the module keep them.
    """

    def __init__(self, in_features, action_features, action_scale=1.0, log_std_min=-20.0, log_std_max=2.0,
                 action_bias=0.0):
        super().__init__()
        in_features = check_count(in_features, "in_features")
        action_features = check_count(action_features, "action_features")
        log_std_min, log_std_max = check_real(log_std_min, "log_std_min"), check_real(log_std_max, "log_std_max")
        if not log_std_min < log_std_max:
            raise ValueError(f"log_std_min ({log_std_min}) must be below log_std_max ({log_std_max})")
        self.to_params = nn.Linear(in_features, 2 * action_features)
        self.action_features = action_features
        # One scale and one bias per action dimension in buffers (.to() moves and casts them; not in the state
        # dict, whose keys stay those of before: a loaded policy takes them from its constructor, as the
        # class docstring says), set through the properties, which check them. forward reads
        # the buffers themselves, so an in-place edit of action_scale moves the actions and the log-prob alike.
        self.register_buffer("_action_scale", torch.ones(action_features), persistent=False)
        self.register_buffer("_action_bias", torch.zeros(action_features), persistent=False)
        self.action_scale, self.action_bias = action_scale, action_bias
        self.log_std_min, self.log_std_max = log_std_min, log_std_max

    def _per_dimension(self, value, name, like, is_valid, requirement):
        # On the host until checked: under a `with torch.device("meta")` block, torch.as_tensor would put even
        # a CPU tensor's values on the meta device, where they cannot be checked.
        per_dim = (value.detach().to(like.dtype) if isinstance(value, torch.Tensor)
                   else torch.as_tensor(value, dtype=like.dtype, device="cpu"))
        if per_dim.dim() > 1 or (per_dim.dim() == 1 and per_dim.numel() != self.action_features):
            raise ValueError(f"{name} must be a number or have {self.action_features} elements (one per "
                             f"action dimension), got shape {tuple(per_dim.shape)}")
        # A module built on the meta device or under FakeTensorMode (deferred initialisation, memory
        # estimates) has no values to check; they are checked when set again with real ones.
        if holds_values(per_dim) and not bool(is_valid(per_dim).all()):
            raise ValueError(f"{name} must be {requirement}, got {value!r}")
        return per_dim.to(like.device).expand(self.action_features).clone()

    @property
    def action_scale(self):
        """The action's scale per dimension, a tensor of shape (action_features,)."""
        return self._action_scale

    @action_scale.setter
    def action_scale(self, value):
        # A number, or one per action dimension ((high - low) / 2 of an environment's box), positive and finite.
        self._action_scale = self._per_dimension(value, "action_scale", self._action_scale,
                                                 lambda scale: (scale > 0) & torch.isfinite(scale),
                                                 "positive and finite")

    @property
    def action_bias(self):
        """The action's centre per dimension, a tensor of shape (action_features,)."""
        return self._action_bias

    @action_bias.setter
    def action_bias(self, value):
        # A number, or one per action dimension ((high + low) / 2 of an environment's box), finite.
        self._action_bias = self._per_dimension(value, "action_bias", self._action_bias, torch.isfinite, "finite")

    def forward(self, features, deterministic=False, seed=None, generator=None):
        """(action, log_prob) for features of shape (..., in_features): action of shape (..., action_features),
        log_prob its log-density, (...). `deterministic=True` gives the action at eps = 0 (evaluation),
        action_bias + action_scale * tanh(mu), and its log-density, and draws nothing. `seed=int` gives the
        same action on every call; otherwise the key comes from `generator` or torch's default generator (one
        draw a call)."""
        check_bool(deterministic, "deterministic")
        mu, log_std = self.to_params(features).chunk(2, dim=-1)
        log_std = log_std.clamp(self.log_std_min, self.log_std_max)
        if deterministic:  # the mode: eps = 0
            u, log_prob_u = mu, -log_std - LOG_SQRT_2PI
        else:
            # log_std is clamped into [log_std_min, log_std_max]: in the domain by construction (NaN propagates)
            u, log_prob_u = normal_rsample_and_log_prob(mu, log_std, scale="log_sigma", seed=seed,
                                                        generator=generator, validate_args=False)
        squash_correction = 2 * (math.log(2) - u - nn.functional.softplus(-2 * u))
        scale = self._action_scale.to(u.dtype)
        log_prob = (log_prob_u - squash_correction).sum(-1) - scale.log().sum()
        return torch.addcmul(self._action_bias.to(u.dtype), torch.tanh(u), scale), log_prob


BAYESIAN_LINEAR_MODES = ("weight", "local", "flipout")


def _sample_dims(x, sample_shape, name="x"):
    """The output's sample dims under matmul broadcasting: x's batch dims (all but its last two) against
    sample_shape. x of shape (B, in) is shared by every weight sample; x of shape sample_shape + (B, in), a
    previous Bayesian layer's output, meets weight sample s in its slice s."""
    x_batch = tuple(x.shape[:-2])
    try:
        return tuple(torch.broadcast_shapes(x_batch, sample_shape))
    except RuntimeError:
        raise ValueError(f"{name} of shape {tuple(x.shape)} has batch dims {x_batch} that do not broadcast "
                         f"against sample_shape={sample_shape}") from None


def _sampled_linear(x, weight, bias, sample_shape):
    """x @ weight^T + bias for weight of shape sample_shape + (out, in), under matmul broadcasting.

    When x carries no batch dims, the samples are folded into one (B, in) x (in, S*out) product, so x is
    read once and never expanded S times.
    """
    if not sample_shape:
        return F.linear(x, weight, bias)
    out_features, in_features = weight.shape[-2:]
    if x.dim() == 2:
        y = F.linear(x, weight.reshape(-1, in_features)).unflatten(-1, (*sample_shape, out_features))
        y = y.movedim(0, len(sample_shape))
    else:
        y = torch.matmul(x, weight.transpose(-1, -2))
    # Under autocast the matmul's dtype (F.linear casts its bias to it too); elsewhere the cast does nothing.
    return y if bias is None else y + bias.unsqueeze(-2).to(y.dtype)


def _random_signs(which, like, rng_state, shape):
    """+-1 of `shape` from the stream: the sign of a normal draw (0, probability about 2^-25, counts as +)."""
    zero, one = like.new_zeros(()), like.new_ones(())
    noise = draw_normal(which, zero, one, rng_state, "sigma", shape)
    return torch.where(noise < 0, -one, one)


class _LocalReparameterizationStd(torch.autograd.Function):
    """std = sqrt(x^2 sigma^2^T + b_sigma^2), sigma = softplus(rho): the activations' std of the local trick.

    Written by hand so that backward keeps only x, rho (the caller's tensors) and std (which the sampler keeps
    anyway): autograd through the torch expression would keep sigma^2 and softplus(rho) (weight-sized) and x^2.
    The backward recomputes them as temporaries (in place on fresh tensors, to touch each weight-sized buffer
    as few times as possible), with the same two matmuls autograd would use.

    sqrt feeding scale="sigma", rather than log feeding scale="logvar": sqrt is correctly rounded, where
    exp(log(var) / 2) rounds twice with an error growing with |log var|; the gradients agree. var is exactly 0
    only where a row of x is 0 and there is no bias: the clamp at `tiny` makes that gradient the true 0 instead
    of 0 * inf = NaN and leaves every positive variance untouched; a NaN var stays NaN, with NaN gradients.

    Under autocast the forward's matmul runs in the low precision and the backward gets that dtype's grad_std;
    the backward computes in the widest of its inputs' dtypes (autograd casts each gradient to its input's).
    """

    generate_vmap_rule = True  # vmap runs forward and backward per batch member (torch.func)

    @staticmethod
    def forward(x, weight_rho, bias_rho):
        bias_var = None if bias_rho is None else softplus(bias_rho).square()
        var = F.linear(x.square(), softplus(weight_rho).square(), bias_var)
        return var.clamp_min(smallest_positive(var.dtype)).sqrt()

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight_rho, bias_rho = inputs
        ctx.save_for_backward(x, weight_rho, bias_rho, output)

    @staticmethod
    def backward(ctx, grad_std):
        x, weight_rho, bias_rho, std = ctx.saved_tensors
        dtype = torch.promote_types(torch.promote_types(x.dtype, weight_rho.dtype), std.dtype)
        if bias_rho is not None:
            dtype = torch.promote_types(dtype, bias_rho.dtype)
        x, weight_rho, grad_std = x.to(dtype), weight_rho.to(dtype), grad_std.to(dtype)
        bias_rho = None if bias_rho is None else bias_rho.to(dtype)
        # False for NaN: its gradient stays NaN. The clamp's bound is compared in std's own dtype.
        clamped = std <= math.sqrt(smallest_positive(std.dtype))
        std = std.to(dtype)
        grad_var = torch.where(clamped, torch.zeros_like(std), grad_std / (2 * std))
        grad_x = grad_weight_rho = grad_bias_rho = None
        weight_sigma = softplus(weight_rho)
        # In place on the fresh temporaries, unless this backward is itself differentiated (create_graph),
        # where autograd needs them unchanged.
        mul = torch.mul if torch.is_grad_enabled() else torch.Tensor.mul_
        if ctx.needs_input_grad[0]:
            grad_x = mul(mul(grad_var @ (weight_sigma * weight_sigma), x), 2)
        if ctx.needs_input_grad[1]:
            flat_grad_var, flat_x = grad_var.reshape(-1, grad_var.shape[-1]), x.reshape(-1, x.shape[-1])
            # d sigma^2 / d rho = 2 sigma sigmoid(rho)
            dvar_drho = mul(mul(weight_sigma, 2), torch.sigmoid(weight_rho))
            grad_weight_rho = mul(flat_grad_var.T @ flat_x.square(), dvar_drho)
        if bias_rho is not None and ctx.needs_input_grad[2]:
            grad_bias_rho = (grad_var.reshape(-1, grad_var.shape[-1]).sum(0)
                             * (2 * softplus(bias_rho) * torch.sigmoid(bias_rho)))
        return grad_x, grad_weight_rho, grad_bias_rho


class BayesianLinear(nn.Module):
    """A linear layer with a factorized Gaussian posterior over its weights (Bayes by backprop).

    q(W) = N(weight_mu, softplus(weight_rho)^2), likewise the bias; the prior is N(0, prior_sigma^2).
    The noise comes from rtrick_ops' counter-based stream, so the backward regenerates it instead of keeping
    a weight-sized eps, and `seed` makes the sampled weights reproducible. Modes:

      "weight":  W = mu + softplus(rho) * eps in the fused sampler (rtrick_ops.normal_rsample,
                 scale="softplus"), then x @ W^T. One weight sample per sample index, shared by the batch.
      "local":   the local reparameterization trick (Kingma et al. 2015): the activations' Gaussian,
                 mean = x mu^T + b_mu, var = x^2 sigma^2^T + b_sigma^2, sampled directly with eps per output
                 activation. Lower-variance gradients; no weight sample exists.
      "flipout": (Wen et al. 2018) one shared perturbation dW = softplus(rho) * eps per sample index,
                 decorrelated across examples by random signs: y = x mu^T + ((x * s_in) dW^T) * s_out + b.

    forward(x, sample_shape=(S,)) draws S samples in one call: x of shape (B, in) gives (S, B, out) without
    expanding x (the "weight" mode folds the S weights into one matmul, the "local" mode draws S activations
    from one mean and variance); x of shape (S, B, in), a previous layer's samples, pairs slice s with
    sample s. Flipout needs per-example signs for every sample, so it materializes x * s_in of (S, B, in).
    """

    def __init__(self, in_features, out_features, bias=True, prior_sigma=1.0, mode="weight", init_rho=-5.0,
                 backend="auto"):
        super().__init__()
        in_features, out_features = check_count(in_features, "in_features"), check_count(out_features, "out_features")
        prior_sigma = check_real(prior_sigma, "prior_sigma")
        if not prior_sigma > 0:
            raise ValueError(f"prior_sigma must be positive and finite, got {prior_sigma}")
        check_choice(mode, "mode", BAYESIAN_LINEAR_MODES)
        check_choice(backend, "backend", BACKENDS)
        bias, init_rho = check_bool(bias, "bias"), check_real(init_rho, "init_rho")
        self.in_features, self.out_features = in_features, out_features
        self.prior_sigma, self.mode, self.init_rho, self.backend = prior_sigma, mode, init_rho, backend
        self.weight_mu = nn.Parameter(torch.empty(out_features, in_features))
        self.weight_rho = nn.Parameter(torch.empty(out_features, in_features))
        if bias:
            self.bias_mu = nn.Parameter(torch.empty(out_features))
            self.bias_rho = nn.Parameter(torch.empty(out_features))
        else:
            self.register_parameter("bias_mu", None)
            self.register_parameter("bias_rho", None)
        self.reset_parameters()

    def reset_parameters(self):
        # The means as nn.Linear initializes its weights; sigma = softplus(init_rho) starts small (0.0067 at
        # -5) so the first steps train the means, as Blundell et al. (2015) start.
        nn.init.kaiming_uniform_(self.weight_mu, a=math.sqrt(5))
        nn.init.constant_(self.weight_rho, self.init_rho)
        if self.bias_mu is not None:
            bound = 1 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias_mu, -bound, bound)
            nn.init.constant_(self.bias_rho, self.init_rho)

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias_mu is not None}, "
                f"prior_sigma={self.prior_sigma}, mode={self.mode!r}")

    def _posteriors(self):
        yield self.weight_mu, self.weight_rho
        if self.bias_mu is not None:
            yield self.bias_mu, self.bias_rho

    def kl(self):
        """KL(q || prior) summed over the layer's weights and biases, in closed form.

        KL(N(mu, s^2) || N(0, p^2)) = KL(N(mu / p, (s / p)^2) || N(0, 1)), so the fused KL to N(0, 1)
        (rtrick_ops.normal_kl, cancellation-free near s = p) serves any prior scale.

        Summed in float32 for float16 and bfloat16 parameters (and returned so): a 256 x 256 layer's KL is
        about 3e5 at the initial sigma, past float16's largest value.
        """
        dtype = self.weight_mu.dtype
        total_dtype = torch.float32 if dtype in HALF_DTYPES else dtype
        total = self.weight_mu.new_zeros((), dtype=total_dtype)
        for mu, rho in self._posteriors():
            # Keeps mu / p and softplus(rho) / p for backward. Recomputing them instead (a checkpoint) took
            # 1.6x the time of the KL's forward + backward on CPU, for two parameter-sized temporaries.
            # sigma = softplus(rho) >= 0 by construction; 0 where it underflows (rho below -104 in float32),
            # a finite rho, so no error there: the KL is inf, as the formula gives.
            total = total + normal_kl(mu / self.prior_sigma, softplus(rho) / self.prior_sigma, scale="sigma",
                                      backend=self.backend, validate_args=False).sum(dtype=total_dtype)
        return total

    def forward(self, x, sample_shape=(), seed=None, generator=None):
        """y = x W^T + b with (W, b) ~ q; shape broadcast(x.shape[:-2], sample_shape) + x.shape[-2:-1] + (out,).

        seed: an int makes the call's noise (weights, activations or signs) reproducible on any machine; None
        draws a fresh key from `generator` or torch's default generator.
        """
        check_param(x, "x")
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"x must have in_features={self.in_features} in its last dim, got shape {tuple(x.shape)}")
        sample_shape = check_sample_shape(sample_shape)
        if x.dim() == 1:  # one example: the code below keeps a rows dim throughout
            return self.forward(x.unsqueeze(0), sample_shape, seed, generator).squeeze(-2)
        sample_dims = _sample_dims(x, sample_shape)
        which = NORMAL_RSAMPLE.route(self.backend, x.device)
        weight_stream, bias_stream, input_sign_stream, output_sign_stream = substreams(
            make_rng_state(seed, generator, x.device), 4)
        has_bias = self.bias_mu is not None

        if self.mode == "weight":
            weight = draw_normal(which, self.weight_mu, self.weight_rho, weight_stream, "softplus", sample_shape)
            bias = (draw_normal(which, self.bias_mu, self.bias_rho, bias_stream, "softplus", sample_shape)
                    if has_bias else None)
            return _sampled_linear(x, weight, bias, sample_shape)

        if self.mode == "local":
            mean = F.linear(x, self.weight_mu, self.bias_mu)
            std = _LocalReparameterizationStd.apply(x, self.weight_rho, self.bias_rho)
            x_batch = tuple(x.shape[:-2])
            if x_batch == sample_dims:  # the activations already carry every sample dim
                extra = ()
            elif not x_batch:
                extra = sample_shape
            else:  # x's batch dims broadcast against sample_shape: rare, so the mean and std are expanded
                full = sample_dims + tuple(mean.shape[-2:])
                mean, std, extra = mean.expand(full), std.expand(full), ()
            return draw_normal(which, mean, std, weight_stream, "sigma", extra)

        # flipout
        zero = self.weight_mu.new_zeros(())
        weight_perturbation = draw_normal(which, zero, self.weight_rho, weight_stream, "softplus", sample_shape)
        rows = tuple(x.shape[-2:-1])
        input_signs = _random_signs(which, x, input_sign_stream, sample_dims + rows + (self.in_features,))
        output_signs = _random_signs(which, x, output_sign_stream, sample_dims + rows + (self.out_features,))
        mean = F.linear(x, self.weight_mu)
        perturbation = _sampled_linear(x * input_signs, weight_perturbation, None, sample_shape)
        # The signs and the bias in the matmuls' dtype, which autocast may have lowered, as nn.Linear's output is
        y = mean + perturbation * output_signs.to(perturbation.dtype)
        if has_bias:
            bias = draw_normal(which, self.bias_mu, self.bias_rho, bias_stream, "softplus", sample_shape)
            y = y + (bias.unsqueeze(-2) if sample_shape else bias).to(y.dtype)
        return y
