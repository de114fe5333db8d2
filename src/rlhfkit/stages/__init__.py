"""The stages: one top-to-bottom file each (sft, reward_model, sample, ppo, gym_ppo, evaluate, pipeline).

A stage imports components (``data``, ``models``, ``rl``, ``accel``, ``judges``, ``eval``) and never another
stage; the pipeline, which runs them in turn, and its time planner (``budget.py``) are the exception.
"""
