"""MLP actor-critic for Gymnasium environments: Categorical for discrete actions, Gaussian for continuous.

Separate actor and critic networks with orthogonal initialisation (the CleanRL / OpenAI baselines recipe:
gain √2 on hidden layers, 0.01 on the policy output so the first policy is near uniform, 1 on the value).
"""

from __future__ import annotations

import math

import gymnasium as gym
import torch
from torch import Tensor, nn
from torch.distributions import Normal


def _layer(n_in: int, n_out: int, gain: float = math.sqrt(2)) -> nn.Linear:
    layer = nn.Linear(n_in, n_out)
    nn.init.orthogonal_(layer.weight, gain)  # orthogonal initialisation
    nn.init.zeros_(layer.bias)
    return layer


def _mlp(n_in: int, hidden: list[int], n_out: int, out_gain: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [_layer(n_in, h), nn.Tanh()]
        n_in = h
    layers.append(_layer(n_in, n_out, out_gain))
    return nn.Sequential(*layers)


class ActorCritic(nn.Module):
    """π(a|s) and V(s) as two MLPs. Continuous actions: mean from the MLP, log-std a free parameter."""

    def __init__(self, obs_space: gym.Space, act_space: gym.Space, hidden: list[int] = (64, 64)):
        super().__init__()
        obs_dim = int(math.prod(obs_space.shape))
        self.discrete = isinstance(act_space, gym.spaces.Discrete)
        if not self.discrete and not isinstance(act_space, gym.spaces.Box):
            raise ValueError(f"action space {act_space}: only Discrete and Box are supported")
        act_dim = int(act_space.n) if self.discrete else int(math.prod(act_space.shape))
        self.critic = _mlp(obs_dim, list(hidden), 1, out_gain=1.0)
        self.actor = _mlp(obs_dim, list(hidden), act_dim, out_gain=0.01)
        if not self.discrete:
            self.log_std = nn.Parameter(torch.zeros(act_dim))  # state-independent log-std

    def value(self, obs: Tensor) -> Tensor:
        return self.critic(obs).squeeze(-1)

    def log_prob_entropy(self, obs: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
        """Log-probability of ``action`` and the policy's entropy per sample (summed over action dimensions)."""
        out = self.actor(obs)
        if self.discrete:  # log-softmax by hand: a third cheaper than torch.distributions.Categorical
            logp_all = out.log_softmax(-1)
            logp = logp_all.gather(-1, action.long().unsqueeze(-1)).squeeze(-1)
            return logp, -(logp_all.exp() * logp_all).sum(-1)
        d = Normal(out, self.log_std.exp().expand_as(out), validate_args=False)
        return d.log_prob(action).sum(-1), d.entropy().sum(-1)

    def act(self, obs: Tensor, deterministic: bool = False) -> tuple[Tensor, Tensor]:
        """Sample an action (or take the most likely one when ``deterministic``); returns ``(action, log_prob)``."""
        out = self.actor(obs)
        if self.discrete:
            logp_all = out.log_softmax(-1)
            action = logp_all.argmax(-1) if deterministic else torch.multinomial(logp_all.exp(), 1).squeeze(-1)
            return action, logp_all.gather(-1, action.unsqueeze(-1)).squeeze(-1)
        d = Normal(out, self.log_std.exp().expand_as(out), validate_args=False)
        action = out if deterministic else d.sample()
        return action, d.log_prob(action).sum(-1)
