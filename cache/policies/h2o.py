"""H2O: heavy hitters (largest accumulated attention) plus the recent window.

Zhang et al., *H2O: Heavy-Hitter Oracle for Efficient Generative Inference of
Large Language Models*, https://arxiv.org/abs/2306.14048.  A token's score is
the sum of the attention it has received from every query so far (all query
heads of its GQA group); the recent window is the cache's residual window.

Shapes: score = acc [n_kv, N] float32, an array of ``xp`` (see :mod:`.base`);
the decode step's probabilities are added straight in.
"""

from __future__ import annotations

from .base import Policy


class H2O(Policy):
    name = "h2o"
