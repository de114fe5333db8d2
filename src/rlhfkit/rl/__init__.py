"""Classic PPO on Gymnasium environments (``rlhf gym``), sharing ``rlhfkit.ppo`` losses and advantages.

``agent.py`` the MLP actor-critic, ``normalize.py`` running statistics, ``trainer.py`` the loop.
"""
