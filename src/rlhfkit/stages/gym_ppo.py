"""PPO on Gymnasium environments (``rlhf gym ENV_ID``), built on the PPO maths the language-model trainer uses.

The loop reads top to bottom like CleanRL's ``ppo.py``: collect a rollout from vectorised environments →
GAE (``rlhfkit.rl.advantages.gae`` with ``dones`` and a bootstrap value) → several epochs of clipped
policy/value updates on minibatches (``rlhfkit.rl.losses``) → log, evaluate, checkpoint.
"""

from __future__ import annotations

import json
import time
from collections import deque
from pathlib import Path
from typing import Callable

import gymnasium as gym
import numpy as np
import torch

from rlhfkit.config import ConfigError, GymConfig
from rlhfkit.data.normalize import RunningMeanStd
from rlhfkit.models.actor_critic import ActorCritic
from rlhfkit.rl.advantages import gae, masked_whiten
from rlhfkit.rl.losses import explained_variance, policy_loss, value_loss
from rlhfkit.run import Run

EVAL_SEED = 10_000  # evaluation episodes use seeds apart from training's


def make_envs(env_id: str, n: int) -> gym.vector.SyncVectorEnv:
    """``n`` copies of ``env_id``; an episode's end returns its final observation in ``infos`` (same-step reset)."""
    try:
        gym.spec(env_id)
    except gym.error.Error as e:
        raise ConfigError(f"env_id: {env_id}: {e}") from None
    return gym.vector.SyncVectorEnv([lambda: gym.make(env_id) for _ in range(n)],
                                    autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)


class ObsNormalizer:
    """Observation normalisation (optional): running mean/std, then clipping to ±clip."""

    def __init__(self, shape: tuple[int, ...], enabled: bool, clip: float):
        self.rms, self.enabled, self.clip = RunningMeanStd(shape), enabled, clip

    def __call__(self, obs: np.ndarray, update: bool = False) -> torch.Tensor:
        if self.enabled:
            if update:
                self.rms.update(obs)
            obs = np.clip((obs - self.rms.mean) / np.sqrt(self.rms.var + 1e-8), -self.clip, self.clip)
        return torch.as_tensor(obs, dtype=torch.float32)


def evaluate(policy: Callable[[np.ndarray], np.ndarray], env_id: str, episodes: int, seed: int) -> list[float]:
    """Returns of ``episodes`` episodes of ``policy`` (observations → actions), one per environment copy."""
    envs = make_envs(env_id, episodes)
    obs, _ = envs.reset(seed=seed)
    returns = np.zeros(episodes)
    running = np.ones(episodes, dtype=bool)
    while running.any():
        obs, reward, terminated, truncated, _ = envs.step(policy(obs))
        returns += reward * running
        running &= ~(terminated | truncated)
    envs.close()
    return returns.tolist()


def greedy_policy(agent: ActorCritic, normalize: ObsNormalizer, space: gym.Space) -> Callable[[np.ndarray], np.ndarray]:
    """The deterministic policy used for evaluation: most likely action (discrete) or the mean (continuous)."""

    def policy(obs: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            action, _ = agent.act(normalize(obs), deterministic=True)
        return _to_env(action, space)

    return policy


def _to_env(action: torch.Tensor, space: gym.Space) -> np.ndarray:
    if isinstance(space, gym.spaces.Box):
        return np.clip(action.numpy(), space.low, space.high)  # the env gets clipped actions, the buffer the sample
    return action.numpy()


def train_gym(cfg: GymConfig) -> dict:
    """Train PPO on ``cfg.env_id``; writes config.yaml, metrics.jsonl, checkpoint/ (and eval.json)."""
    run = Run("gym", cfg)  # threads (tiny MLPs: one is faster than several), seed
    out = run.out

    envs = make_envs(cfg.env_id, cfg.num_envs)
    act_space = envs.single_action_space
    agent = ActorCritic(envs.single_observation_space, act_space, cfg.hidden_sizes)
    optimizer = torch.optim.Adam(agent.parameters(), lr=cfg.lr, eps=1e-5, fused=True)  # Adam ε 1e-5 (baselines)
    normalize_obs = ObsNormalizer(envs.single_observation_space.shape, cfg.normalize_obs, cfg.clip_obs)
    reward_rms, discounted = RunningMeanStd(), np.zeros(cfg.num_envs)
    greedy = greedy_policy(agent, normalize_obs, act_space)

    batch_size = cfg.num_envs * cfg.num_steps
    minibatch_size = batch_size // cfg.num_minibatches
    num_updates = cfg.total_steps // batch_size
    if num_updates < 1 or minibatch_size < 1:
        raise ConfigError(f"total_steps: {cfg.total_steps} is less than one rollout (num_envs × num_steps = {batch_size})")
    global_step, update, recent_returns = 0, 0, deque(maxlen=20)

    def restore(tensors: dict) -> None:  # the checkpoint's parts beyond the optimiser and the RNG
        nonlocal global_step, update
        agent.load_state_dict(tensors["agent"])
        normalize_obs.rms.load_state_dict(tensors["obs_rms"])
        reward_rms.load_state_dict(tensors["reward_rms"])
        global_step, update = tensors["global_step"], tensors["update"]
        recent_returns.extend(tensors["recent_returns"])

    def save(folder: Path | None) -> dict:
        return {"agent": agent.state_dict(), "obs_rms": normalize_obs.rms.state_dict(), "reward_rms": reward_rms.state_dict(),
                "global_step": global_step, "update": update, "recent_returns": list(recent_returns)}

    run.save = save
    run.begin(optimizer, None, run.checkpoint_to_resume(), restore=restore)  # metrics are logged by environment step
    logger = run.logger

    # Rollout storage, time last: (num_envs, num_steps), as ppo.advantages.gae expects.
    obs_buf = torch.zeros((cfg.num_envs, cfg.num_steps) + envs.single_observation_space.shape)
    act_buf = torch.zeros((cfg.num_envs, cfg.num_steps) + act_space.shape)
    logp_buf, rew_buf, done_buf, val_buf = (torch.zeros(cfg.num_envs, cfg.num_steps) for _ in range(4))

    raw_obs, _ = envs.reset(seed=cfg.seed + global_step)  # a resumed run reseeds its environments
    next_obs = normalize_obs(raw_obs, update=True)
    ep_return, ep_count = np.zeros(cfg.num_envs), 0
    start, time_eval, steps_at_start = time.perf_counter(), 0.0, global_step

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(TextColumn(f"[bold]{cfg.env_id}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        TextColumn("{task.fields[info]}"))
    task = progress.add_task("steps", total=num_updates * batch_size, completed=global_step, info="")
    with progress:
        while update < num_updates:
            update += 1
            t_update = time.perf_counter()
            frac = 1.0 - (update - 1.0) / num_updates
            if cfg.anneal_lr:  # linear learning-rate annealing to 0
                optimizer.param_groups[0]["lr"] = frac * cfg.lr
            clip_eps = frac * cfg.clip_eps if cfg.anneal_clip else cfg.clip_eps

            # 1. collect a rollout
            for step in range(cfg.num_steps):
                global_step += cfg.num_envs
                obs_buf[:, step] = next_obs
                with torch.inference_mode():
                    action, logp = agent.act(next_obs)
                    val_buf[:, step] = agent.value(next_obs)
                act_buf[:, step], logp_buf[:, step] = action, logp
                raw_obs, reward, terminated, truncated, infos = envs.step(_to_env(action, act_space))
                done = terminated | truncated
                ep_return += reward
                for i in np.flatnonzero(done):
                    recent_returns.append(float(ep_return[i]))
                    ep_count += 1
                ep_return[done] = 0.0
                if cfg.normalize_reward:  # reward scaling by the std of the discounted return
                    discounted = discounted * cfg.gamma + reward
                    reward_rms.update(discounted)
                    reward = np.clip(reward / np.sqrt(reward_rms.var + 1e-8), -cfg.clip_reward, cfg.clip_reward)
                    discounted[done] = 0.0
                reward = torch.as_tensor(reward, dtype=torch.float32)
                if cfg.bootstrap_truncated and (truncated & ~terminated).any():
                    # time-limit truncation is not a real end: bootstrap from the final observation's value
                    idx = np.flatnonzero(truncated & ~terminated)
                    final = normalize_obs(np.stack([infos["final_obs"][i] for i in idx]))
                    with torch.inference_mode():
                        reward[idx] += cfg.gamma * agent.value(final)
                rew_buf[:, step], done_buf[:, step] = reward, torch.as_tensor(done, dtype=torch.float32)
                next_obs = normalize_obs(raw_obs, update=True)

            # 2. advantages: GAE with no bootstrap across episode ends, bootstrap from V(s_T) at the end
            with torch.inference_mode():
                next_value = agent.value(next_obs)
            advantages, returns = gae(rew_buf, val_buf, gamma=cfg.gamma, lam=cfg.gae_lambda,
                                      dones=done_buf, next_value=next_value)

            # 3. optimise: several epochs over shuffled minibatches of the rollout
            b_obs = obs_buf.reshape((batch_size,) + envs.single_observation_space.shape)
            b_act = act_buf.reshape((batch_size,) + act_space.shape)
            b_logp, b_adv, b_ret, b_val = (x.reshape(-1) for x in (logp_buf, advantages, returns, val_buf))
            stats: dict[str, list[torch.Tensor]] = {}
            for _epoch in range(cfg.update_epochs):
                perm = torch.randperm(batch_size)
                for mb in perm.split(minibatch_size):
                    new_logp, entropy = agent.log_prob_entropy(b_obs[mb], b_act[mb])
                    mb_adv = masked_whiten(b_adv[mb]) if cfg.norm_adv else b_adv[mb]  # advantage normalisation
                    pg_loss, pg_stats = policy_loss(new_logp, b_logp[mb], mb_adv, clip_eps=clip_eps)
                    v_loss, v_stats = value_loss(agent.value(b_obs[mb]), b_val[mb], b_ret[mb],
                                                 clip_eps=clip_eps if cfg.clip_vloss else None)
                    ent = entropy.mean()
                    loss = pg_loss - cfg.ent_coef * ent + cfg.vf_coef * v_loss  # entropy bonus, value coefficient
                    optimizer.zero_grad()
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(agent.parameters(), cfg.max_grad_norm)  # global grad-norm clip
                    optimizer.step()
                    for k, v in {"policy_loss": pg_loss, "value_loss": v_loss, "entropy": ent, **pg_stats,
                                 **v_stats}.items():
                        stats.setdefault(k, []).append(v.detach())
                if cfg.target_kl is not None and pg_stats["approx_kl"] > cfg.target_kl:
                    break  # early stop on approximate KL

            # 4. log, evaluate, checkpoint
            now = time.perf_counter()
            row = {"step": global_step, "update": update,
                   "episodic_return": float(np.mean(recent_returns)) if recent_returns else None,
                   "episodes": ep_count, "lr": optimizer.param_groups[0]["lr"]}
            row.update({k: torch.stack(v).mean().item() for k, v in stats.items()})
            row["explained_variance"] = explained_variance(b_val, b_ret).item()
            row["sps"] = int((global_step - steps_at_start) / max(now - start - time_eval, 1e-9))
            row["time_step_s"] = now - t_update
            if cfg.eval_every and cfg.eval_episodes and (global_step // cfg.eval_every
                                                         > (global_step - batch_size) // cfg.eval_every
                                                         or update == num_updates):
                eval_returns = evaluate(greedy, cfg.env_id, cfg.eval_episodes, EVAL_SEED + cfg.seed)
                row["eval_return"], row["eval_return_std"] = float(np.mean(eval_returns)), float(np.std(eval_returns))
                time_eval += time.perf_counter() - now
            if update % cfg.log_every == 0 or update == num_updates:
                logger.log(global_step, {k: v for k, v in row.items() if k != "step"})
            if (cfg.save_every and update % cfg.save_every == 0) or update == num_updates:
                run.save_checkpoint(global_step)
            ret = row["episodic_return"]
            progress.update(task, completed=global_step,
                            info=f"return {ret:.1f}  {row['sps']} steps/s" if ret is not None else "")
    envs.close()
    logger.close()

    summary = {"env_id": cfg.env_id, "step": global_step,
               "episodic_return": float(np.mean(recent_returns)) if recent_returns else None}
    if cfg.eval_episodes:
        eval_returns = evaluate(greedy, cfg.env_id, cfg.eval_episodes, EVAL_SEED + cfg.seed)
        summary["eval"] = {"episodes": cfg.eval_episodes, "mean_return": float(np.mean(eval_returns)),
                           "std_return": float(np.std(eval_returns)), "returns": eval_returns, "step": global_step}
        (out / "eval.json").write_text(json.dumps(summary["eval"], indent=2) + "\n")
    return summary
