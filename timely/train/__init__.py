"""Training on trajectories: views of the one record that SFT and Timely-RL (GRPO) consume.

Everything here is derived from :class:`~timely.types.Trajectory` records, never from a second
agent loop. Submodules import what they need (torch only inside functions that use it), so
importing this package costs nothing.
"""
