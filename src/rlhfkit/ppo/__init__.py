"""PPO for language models (DESIGN §4): rollout.py (sampling and the rollout's passes), advantages.py and
losses.py (the maths, shared with rl/), value.py (value models), health.py (health checks), trainer.py (the loop)."""
