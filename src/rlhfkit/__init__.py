"""rlhfkit: reinforcement learning from human feedback with PPO, end to end."""

__version__ = "0.1.0"
