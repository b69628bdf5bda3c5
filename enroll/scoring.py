"""AS-norm scoring lives in :mod:`asit_embed.scoring` (``asit-embed evaluate`` scores with it too); these
names stay importable from here."""

from asit_embed.scoring import DEFAULT_TOP_N, ASNorm, checkpoint_scoring, cohort_clips

__all__ = ["DEFAULT_TOP_N", "ASNorm", "checkpoint_scoring", "cohort_clips"]
