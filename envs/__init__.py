"""Text environments (TextWorld, Crafter, BIG-Bench Hard) behind one gymnasium API.

    import envs
    env = envs.make("crafter", seed=0)                       # or "textworld/coin-easy", "bbh/navigate"
    obs, info = env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step("move west")
    batch = envs.make_batch("textworld/coin-easy", 8)        # many at once, no auto-reset
    envs.names()                                             # every valid name

Observations and actions are strings; `info` carries `task`, `score`, `max_score`, `won`, `lost`,
`invalid_action` and `admissible_actions` where known. `envs.Transcript` renders an episode in the
one text format shared by corpora, rollouts and agents. Modules: textworld, crafter, crafter_manual,
crafter_explorer, bbh, transcript, batch, registry, family (what each family declares: `envs.family(name)`),
corpus, corruption. User guide: docs/envs.md.
"""

from envs.batch import BatchEnv
from envs.family import Aggregate, Breakdown, Column, EnvFamily
from envs.registry import family, family_names, make, make_batch, names, patterns, register_family
from envs.transcript import Transcript

__all__ = ["Aggregate", "BatchEnv", "Breakdown", "Column", "EnvFamily", "Transcript", "family", "family_names", "make",
           "make_batch", "names", "patterns", "register_family"]
