"""Soft Actor-Critic on gymnasium's Pendulum-v1: rtrick_ops' fused policy head next to the textbook one.

    .venv/bin/python examples/sac_pendulum.py                  # the committed run: 5 seeds, 5 to 8 minutes idle
    .venv/bin/python examples/sac_pendulum.py --quick          # a smaller agent, one seed, both policies: about a minute

Two agents that differ only in how the policy draws its action and log-probability:
  "textbook": Normal(mu, sigma).rsample(), tanh, and log_prob - log(1 - tanh(u)^2 + 1e-6)
              (the correction as most SAC code writes it);
  "fused":    rt.nn.GaussianPolicyHead: one fused sampling kernel, and the tanh correction
              computed exactly as 2 * (log 2 - u - softplus(-2u)).
Everything else (networks, their initialization, replay buffer, minibatch order, environment
seeds, hyperparameters) is the same per seed. Writes to examples/results/sac_pendulum/ (with --quick,
its quick/ folder, which git ignores): learning_curves.png, results.json and comparison.md.
docs/sac_example.md explains the setup.
"""
import argparse
import copy
import json
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

import rtrick_ops as rt

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "sac_pendulum"
POLICIES = ("textbook", "fused")
LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0  # both policies clamp log sigma to this range (rt.nn.GaussianPolicyHead's)
SOLVED_RETURN = -200.0  # Pendulum-v1 has no official threshold; well-trained agents return about -150 to -200


@dataclass
class Config:
    steps: int = 10_000
    seeds: list = field(default_factory=lambda: [0, 1, 2, 3, 4])
    hidden: int = 128
    batch_size: int = 128
    learning_rate: float = 1e-3
    gamma: float = 0.99
    polyak_tau: float = 0.005
    random_steps: int = 1_000  # uniform random actions first, to fill the buffer
    eval_episodes: int = 10
    threads: int = 1  # one thread: the run shares the machine, and at this size more threads barely help


# The CI version (--quick, tests/test_sac_example.py): a smaller, faster-learning agent that goes from about
# -1300 to better than -400 in 3000 steps, about 15 s on one core.
QUICK = Config(steps=3_000, seeds=[0], hidden=64, batch_size=64, learning_rate=3e-3, random_steps=500,
               eval_episodes=3)


# --------------------------------------------------------------------------------------------- policies
class TextbookPolicy(nn.Module):
    """The tanh-squashed Gaussian policy as most SAC implementations write it."""

    def __init__(self, in_features, action_features, action_scale):
        super().__init__()
        self.to_params = nn.Linear(in_features, 2 * action_features)  # the same layer as the fused head's
        self.action_scale = action_scale

    def forward(self, features, deterministic=False):
        mu, log_std = self.to_params(features).chunk(2, dim=-1)
        log_std = log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)
        normal = torch.distributions.Normal(mu, log_std.exp())
        u = mu if deterministic else normal.rsample()
        squashed = torch.tanh(u)
        log_prob = normal.log_prob(u) - torch.log(self.action_scale * (1 - squashed.pow(2)) + 1e-6)
        return squashed * self.action_scale, log_prob.sum(-1)


def policy_head(kind, in_features, action_features, action_scale):
    if kind == "textbook":
        return TextbookPolicy(in_features, action_features, action_scale)
    if kind == "fused":
        return rt.nn.GaussianPolicyHead(in_features, action_features, action_scale=action_scale,
                                        log_std_min=LOG_STD_MIN, log_std_max=LOG_STD_MAX)
    raise ValueError(f"policy={kind!r} is not a policy; valid: {', '.join(map(repr, POLICIES))}")


def mlp(in_features, hidden, out_features):
    return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, out_features))


class Actor(nn.Module):
    def __init__(self, kind, obs_features, action_features, action_scale, hidden):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(obs_features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.head = policy_head(kind, hidden, action_features, action_scale)

    def forward(self, obs, deterministic=False):
        return self.head(self.trunk(obs), deterministic=deterministic)


# --------------------------------------------------------------------------------------------- agent
class ReplayBuffer:
    def __init__(self, capacity, obs_features, action_features):
        self.obs = torch.zeros(capacity, obs_features)
        self.actions = torch.zeros(capacity, action_features)
        self.rewards = torch.zeros(capacity)
        self.next_obs = torch.zeros(capacity, obs_features)
        self.terminated = torch.zeros(capacity)
        self.size = 0

    def add(self, obs, action, reward, next_obs, terminated):
        index = self.size
        self.obs[index], self.actions[index], self.rewards[index] = torch.as_tensor(obs), action, reward
        self.next_obs[index], self.terminated[index] = torch.as_tensor(next_obs), float(terminated)
        self.size += 1

    def sample(self, batch_size, generator):
        index = torch.randint(self.size, (batch_size,), generator=generator)
        return self.obs[index], self.actions[index], self.rewards[index], self.next_obs[index], self.terminated[index]


class SAC:
    """SAC with twin Q networks, target networks and a learned temperature (Haarnoja et al., 2018, v2)."""

    def __init__(self, kind, obs_features, action_features, action_scale, config):
        self.config = config
        self.actor = Actor(kind, obs_features, action_features, action_scale, config.hidden)
        self.critics = nn.ModuleList([mlp(obs_features + action_features, config.hidden, 1) for _ in range(2)])
        self.target_critics = copy.deepcopy(self.critics).requires_grad_(False)
        self.log_alpha = torch.zeros((), requires_grad=True)
        self.target_entropy = -float(action_features)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=config.learning_rate)
        self.critic_optimizer = torch.optim.Adam(self.critics.parameters(), lr=config.learning_rate)
        self.alpha_optimizer = torch.optim.Adam([self.log_alpha], lr=config.learning_rate)

    @staticmethod
    def q_values(critics, obs, actions):
        obs_actions = torch.cat([obs, actions], -1)
        return [critic(obs_actions).squeeze(-1) for critic in critics]

    def act(self, obs, deterministic=False):
        with torch.no_grad():
            action, _ = self.actor(torch.as_tensor(obs, dtype=torch.float32), deterministic=deterministic)
        return action

    def update(self, batch):
        obs, actions, rewards, next_obs, terminated = batch
        alpha = self.log_alpha.exp().detach()
        with torch.no_grad():
            next_actions, next_log_prob = self.actor(next_obs)
            next_q = torch.min(*self.q_values(self.target_critics, next_obs, next_actions))
            target = rewards + self.config.gamma * (1 - terminated) * (next_q - alpha * next_log_prob)
        critic_loss = sum(((q - target) ** 2).mean() for q in self.q_values(self.critics, obs, actions))
        self.critic_optimizer.zero_grad()
        critic_loss.backward()
        self.critic_optimizer.step()

        new_actions, log_prob = self.actor(obs)
        self.critics.requires_grad_(False)  # the actor's loss must not train the critics
        q = torch.min(*self.q_values(self.critics, obs, new_actions))
        self.critics.requires_grad_(True)
        actor_loss = (alpha * log_prob - q).mean()
        self.actor_optimizer.zero_grad()
        actor_loss.backward()
        self.actor_optimizer.step()

        alpha_loss = -(self.log_alpha * (log_prob.detach() + self.target_entropy)).mean()
        self.alpha_optimizer.zero_grad()
        alpha_loss.backward()
        self.alpha_optimizer.step()

        with torch.no_grad():
            for target_param, param in zip(self.target_critics.parameters(), self.critics.parameters()):
                target_param.lerp_(param, self.config.polyak_tau)


# --------------------------------------------------------------------------------------------- training
def make_env():
    import gymnasium

    return gymnasium.make("Pendulum-v1")


def evaluate_returns(agent, seed, episodes):
    """Mean return of the deterministic policy (tanh(mu)) over `episodes` fixed-seed episodes."""
    env = make_env()
    returns = []
    for episode in range(episodes):
        obs, _ = env.reset(seed=10_000 + 100 * seed + episode)
        done, total = False, 0.0
        while not done:
            obs, reward, terminated, truncated, _ = env.step(agent.act(obs, deterministic=True).numpy())
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    env.close()
    return sum(returns) / len(returns)


class Progress:
    """One status line, rewritten in place on a terminal and printed every `every` updates otherwise."""

    def __init__(self, label, total, every=2_000):
        self.label, self.total, self.every, self.start = label, total, every, time.perf_counter()
        self.interactive = sys.stdout.isatty()

    def update(self, step, last_return):
        if not self.interactive and step % self.every and step != self.total:
            return
        elapsed = time.perf_counter() - self.start
        filled = int(30 * step / self.total)
        last = "-" if last_return is None else f"{last_return:8.1f}"
        line = f"{self.label:>18} [{'#' * filled}{'.' * (30 - filled)}] {step}/{self.total} steps, " \
               f"last episode {last}, {elapsed:5.0f} s"
        print("\r" + line if self.interactive else line, end="" if self.interactive else "\n", flush=True)
        if self.interactive and step == self.total:
            print()


def train(kind, seed, config, progress=True):
    """Train one agent; returns its training episodes' (end step, return) and the final evaluation."""
    torch.manual_seed(seed)  # the same networks for both policies: they are built in the same order
    env = make_env()
    obs_features, action_features = env.observation_space.shape[0], env.action_space.shape[0]
    action_scale = float(env.action_space.high[0])
    agent = SAC(kind, obs_features, action_features, action_scale, config)
    buffer = ReplayBuffer(config.steps, obs_features, action_features)
    minibatch_generator = torch.Generator().manual_seed(seed)  # the same minibatches for both policies
    random_actions = torch.Generator().manual_seed(seed + 1)
    env.action_space.seed(seed)
    initial_return = evaluate_returns(agent, seed, config.eval_episodes)

    obs, _ = env.reset(seed=seed)
    episodes, episode_return, last_return = [], 0.0, None
    bar = Progress(f"{kind} seed {seed}", config.steps) if progress else None
    start = time.perf_counter()
    for step in range(1, config.steps + 1):
        if step <= config.random_steps:
            action = (torch.rand(action_features, generator=random_actions) * 2 - 1) * action_scale
        else:
            action = agent.act(obs)
        next_obs, reward, terminated, truncated, _ = env.step(action.numpy())
        buffer.add(obs, action, float(reward), next_obs, terminated)
        obs, episode_return = next_obs, episode_return + float(reward)
        if terminated or truncated:
            episodes.append((step, episode_return))
            last_return, episode_return = episode_return, 0.0
            obs, _ = env.reset()
        if step > config.random_steps:
            agent.update(buffer.sample(config.batch_size, minibatch_generator))
        if bar:
            bar.update(step, last_return)
    seconds = time.perf_counter() - start
    env.close()
    return {"policy": kind, "seed": seed, "episodes": episodes, "initial_eval_return": initial_return,
            "final_eval_return": evaluate_returns(agent, seed, config.eval_episodes), "train_seconds": seconds}


# --------------------------------------------------------------------------------------------- timing
# (batch, action dimensions) at which the policy step is timed: Pendulum's minibatch, then sizes where the
# sampling starts to weigh (many parallel environments, a 6-D action as in HalfCheetah).
POLICY_STEP_SIZES = ((256, 1), (4096, 6), (65536, 6))


def time_policy_steps(config, sizes=POLICY_STEP_SIZES, rounds=7):
    """{(batch, actions): {policy: seconds}} for one policy step as the actor update runs it: the head's linear
    layer, sample, log-prob and their backward, from fixed trunk features.

    The policies are timed in alternation, `rounds` times, and each keeps its fastest median: the machine is
    shared, and load only ever adds time, so the minimum is the estimate least distorted by it.
    """
    from torch.utils import benchmark

    timings = {}
    for batch_size, action_features in sizes:
        timers = {}
        for kind in POLICIES:
            torch.manual_seed(0)
            head = policy_head(kind, config.hidden, action_features, 2.0)
            features = torch.randn(batch_size, config.hidden, requires_grad=True)

            def step(head=head, features=features):
                action, log_prob = head(features)
                (action.sum() + log_prob.sum()).backward()

            timers[kind] = benchmark.Timer(stmt="step()", globals={"step": step}, num_threads=config.threads)
        medians = {kind: [] for kind in POLICIES}
        for _ in range(rounds):
            for kind, timer in timers.items():
                medians[kind].append(timer.blocked_autorange(min_run_time=0.2).median)
        timings[(batch_size, action_features)] = {kind: min(values) for kind, values in medians.items()}
    return timings


# --------------------------------------------------------------------------------------------- reports
def mean(values):
    return sum(values) / len(values)


def curve_on_grid(episodes, steps, points):
    """Return of the latest finished episode at each grid step (None before the first)."""
    grid = [steps * (i + 1) // points for i in range(points)]
    values, index, last = [], 0, None
    for step in grid:
        while index < len(episodes) and episodes[index][0] <= step:
            last = episodes[index][1]
            index += 1
        values.append(last)
    return grid, values


def write_learning_curves(path, runs, config):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7.5, 4.5), constrained_layout=True)
    for color, kind in zip(("tab:blue", "tab:red"), POLICIES):
        curves = [run["episodes"] for run in runs if run["policy"] == kind]
        for episodes in curves:
            axes.plot([s for s, _ in episodes], [r for _, r in episodes], color=color, alpha=0.25, linewidth=0.8)
        grid, _ = curve_on_grid(curves[0], config.steps, 60)
        per_seed = [curve_on_grid(episodes, config.steps, 60)[1] for episodes in curves]
        mean_curve = [mean([c[i] for c in per_seed]) if all(c[i] is not None for c in per_seed) else math.nan
                      for i in range(len(grid))]
        axes.plot(grid, mean_curve, color=color, linewidth=2, label=f"{kind} (mean over {len(curves)} seeds)")
    axes.axhline(SOLVED_RETURN, color="grey", linestyle="--", linewidth=1, label="about solved (-200)")
    axes.set(xlabel="environment steps", ylabel="episode return (training, stochastic policy)",
             title="SAC on Pendulum-v1: textbook vs fused policy head")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    figure.savefig(path, dpi=120)
    plt.close(figure)


def summarize(runs, timings, config, wall_seconds):
    summary = {}
    for kind in POLICIES:
        mine = [run for run in runs if run["policy"] == kind]
        summary[kind] = {
            "final_eval_return_mean": mean([run["final_eval_return"] for run in mine]),
            "final_eval_return_per_seed": [run["final_eval_return"] for run in mine],
            "initial_eval_return_mean": mean([run["initial_eval_return"] for run in mine]),
            "last5_train_return_mean": mean([mean([r for _, r in run["episodes"][-5:]]) for run in mine]),
            "train_seconds_mean": mean([run["train_seconds"] for run in mine]),
            "policy_step_us": timings[POLICY_STEP_SIZES[0]][kind] * 1e6,
        }
    summary["policy_step"] = [{"batch": batch, "actions": actions, "textbook_us": t["textbook"] * 1e6,
                               "fused_us": t["fused"] * 1e6, "ratio_textbook_over_fused": t["textbook"] / t["fused"]}
                              for (batch, actions), t in timings.items()]
    return {"config": asdict(config), "summary": summary, "runs": runs, "wall_seconds": wall_seconds,
            "environment": {"torch": torch.__version__, "python": platform.python_version(),
                            "machine": platform.machine(), "threads": config.threads}}


def comparison_markdown(report):
    config, summary = report["config"], report["summary"]
    lines = [
        "# SAC on Pendulum-v1: textbook vs fused policy head",
        "",
        f"{config['steps']} environment steps per run ({config['random_steps']} random first, then one update per "
        f"step), seeds {', '.join(map(str, config['seeds']))}, hidden {config['hidden']}, batch "
        f"{config['batch_size']}, Adam lr {config['learning_rate']:g}, learned temperature, "
        f"{config['threads']} CPU thread(s). Evaluation: deterministic policy, {config['eval_episodes']} "
        "fixed-seed episodes. Generated by `examples/sac_pendulum.py`.",
        "",
        "| policy | eval return before | final eval return (mean) | per seed | last 5 training episodes "
        "| training time per run | policy step (256 x 1) |",
        "|---|---:|---:|---|---:|---:|---:|",
    ]
    for kind in POLICIES:
        s = summary[kind]
        lines.append(f"| {kind} | {s['initial_eval_return_mean']:.0f} | {s['final_eval_return_mean']:.0f} | "
                     f"{', '.join(f'{v:.0f}' for v in s['final_eval_return_per_seed'])} | "
                     f"{s['last5_train_return_mean']:.0f} | {s['train_seconds_mean']:.0f} s | "
                     f"{s['policy_step_us']:.0f} us |")
    lines += [
        "",
        "Policy step (the head, where the two differ: its linear layer, sample, log-prob and backward), "
        "torch.utils.benchmark, the two timed in alternation, the fastest of 7 medians each, one run:",
        "",
        "| batch x actions | textbook | fused | textbook / fused |",
        "|---|---:|---:|---:|",
        *[f"| {p['batch']} x {p['actions']} | {p['textbook_us']:.0f} us | {p['fused_us']:.0f} us | "
          f"{p['ratio_textbook_over_fused']:.2f} |" for p in summary["policy_step"]],
        "",
        "At Pendulum's 256 x 1 the step is per-operator overhead and the linear layer, not sampling, and the rest "
        "of the update (critics, optimizers) is the same for both, so the training times differ by what the "
        "shared machine's load did to each run more than by the head.",
        "",
        "Pendulum-v1 counts as about solved near -200 (-150 for a very good policy); returns start near -1200 to "
        "-1500. The two heads draw different noise (rtrick_ops' counter-based stream vs torch's generator), so "
        "per-seed runs diverge after the first update; compare the means and the spread over seeds.",
        "",
        "![learning curves](learning_curves.png)",
        "",
    ]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = Config()
    parser.add_argument("--steps", type=int, default=defaults.steps, help="environment steps per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=defaults.seeds)
    parser.add_argument("--quick", action="store_true", help="the CI version (ignores --steps and --seeds)")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"output folder (default {DEFAULT_OUT}, the committed results; --quick: its quick/)")
    args = parser.parse_args(argv)
    if args.out is None:  # a quick run does not overwrite the committed results
        args.out = DEFAULT_OUT / "quick" if args.quick else DEFAULT_OUT
    if not args.quick and args.steps <= defaults.random_steps:  # --quick has its own steps and warm-up
        parser.error(f"--steps must exceed the {defaults.random_steps} random warm-up steps, got {args.steps}")
    config = QUICK if args.quick else Config(steps=args.steps, seeds=args.seeds)
    torch.set_num_threads(config.threads)

    start = time.perf_counter()
    runs = [train(kind, seed, config) for seed in config.seeds for kind in POLICIES]
    timings = time_policy_steps(config)
    report = summarize(runs, timings, config, time.perf_counter() - start)

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(report, indent=1))
    (args.out / "comparison.md").write_text(comparison_markdown(report))
    write_learning_curves(args.out / "learning_curves.png", runs, config)
    for kind in POLICIES:
        s = report["summary"][kind]
        print(f"{kind:>9}: final eval return {s['final_eval_return_mean']:.1f} (mean over seeds), "
              f"policy step {s['policy_step_us']:.0f} us")
    print(f"results written to {args.out}")


if __name__ == "__main__":
    main()
