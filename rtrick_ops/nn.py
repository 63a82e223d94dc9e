"""Modules for the common reparameterized patterns, each a drop-in for the few
lines it replaces.

    head = GaussianLatentHead(256, 16)           # VAE encoder head
    z, kl = head(features)                       # z ~ q(z|x), KL(q || N(0, I)) per example

    policy = GaussianPolicyHead(256, 6)          # SAC-style squashed Gaussian policy
    action, log_prob = policy(features)
"""
import math

import torch
from torch import nn

from .normal import normal_kl, normal_rsample_and_kl, normal_rsample_and_log_prob


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
        self.to_params = nn.Linear(in_features, 2 * latent_features, bias=bias)
        self.latent_features = latent_features

    def forward(self, features, sample_shape=(), seed=None):
        mu, log_sigma = self.to_params(features).chunk(2, dim=-1)
        z, kl = normal_rsample_and_kl(mu, log_sigma, scale="log_sigma", sample_shape=sample_shape, seed=seed)
        return z, kl.sum(-1)


class GaussianPolicyHead(nn.Module):
    """features -> squashed Gaussian action and its log-probability (SAC).

    action = tanh(mu + sigma * eps) * action_scale, with log sigma clamped to
    [log_std_min, log_std_max]. The sample u and its Gaussian log-density come
    from one fused kernel (rtrick_ops.normal_rsample_and_log_prob: from eps
    itself, exact where sigma is tiny); log_prob adds the tanh change of
    variables, computed stably as 2 * (log 2 - u - softplus(-2u)).
    """

    def __init__(self, in_features, action_features, action_scale=1.0, log_std_min=-20.0, log_std_max=2.0):
        super().__init__()
        if not log_std_min < log_std_max:
            raise ValueError(f"log_std_min ({log_std_min}) must be below log_std_max ({log_std_max})")
        self.to_params = nn.Linear(in_features, 2 * action_features)
        self.action_scale = action_scale
        self.log_std_min, self.log_std_max = log_std_min, log_std_max

    def forward(self, features, deterministic=False, seed=None):
        mu, log_std = self.to_params(features).chunk(2, dim=-1)
        log_std = log_std.clamp(self.log_std_min, self.log_std_max)
        if deterministic:  # the mode: eps = 0
            u, log_prob_u = mu, -log_std - 0.5 * math.log(2 * math.pi)
        else:
            u, log_prob_u = normal_rsample_and_log_prob(mu, log_std, scale="log_sigma", seed=seed)
        squash_correction = 2 * (math.log(2) - u - nn.functional.softplus(-2 * u))
        log_prob = (log_prob_u - squash_correction).sum(-1) - u.shape[-1] * math.log(self.action_scale)
        return torch.tanh(u) * self.action_scale, log_prob
