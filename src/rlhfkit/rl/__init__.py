"""The RL maths, torch only: per-token rewards and advantages (``advantages.py``), the clipped losses
(``losses.py``), health checks (``health.py``).

Every stage that optimises a policy (PPO on language models, PPO on Gymnasium) imports these; they import
no stage and no model code.
"""
