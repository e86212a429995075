"""Small helpers every layer shares (no torch, no third-party imports): crash-safe file writes, the user-error
base class, JSON conversion, one-line error descriptions and means with standard errors.

It sits below `envs`, `bwarea`, `agents`, `training` and `evaluation` and imports none of them.
"""
