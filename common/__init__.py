"""Small helpers every layer shares (no torch; numpy for the statistics, tqdm for progress bars): crash-safe file
writes and the output-directory lock, the user-error base class and the one error policy of every command, JSON
conversion, means with standard errors, run logs, progress output.

It sits below `envs`, `bwarea`, `agents`, `training` and `evaluation` and imports none of them.
"""
