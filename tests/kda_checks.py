"""What the Kimi Delta Attention family's tests share (test_kimi_linear.py, test_bailingmoe3.py, test_kimi_k3.py).

test_ssm.py's state tests with the family's tolerance, and the edits their fixture tests make to a loaded model to show
that the logits need a step: a weight replaced, each KDA layer's or each expert layer's fields changed, Kimi Linear's
decay put back in place of a bounded one.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import test_ssm

from kvrun.models.kimi_linear import KDALayer

def state_tolerance(name: str) -> None:
    """``name``'s tolerance in test_ssm.py's state tests, which a test module of the family takes by name: the MLA
    layers' K and V are kept fp16, and a chunk's float32 roundings upstream flip some of their roundings, as Qwen3.5's
    keys', which this family carries into the logits (Kimi Linear's: 1.1e-3 of logits up to 15 fed in chunks of 9
    against one chunk)."""
    test_ssm.ATOL.setdefault(name, 2e-3)


def weight(m: Any, a: np.ndarray) -> Any:
    """``a`` as one of ``m``'s float32 weights."""
    a = np.ascontiguousarray(a, np.float32)
    return m.be.upload(a.view(np.uint8), 0, a.shape)  # (0: GGML_TYPE_F32)


def each_kda(fn: Callable[[Any, Any], Any]) -> Callable[[Any], Any]:
    """An edit of a model: ``fn(m, kda)`` on each KDA layer's ``kda``."""
    return lambda m: [fn(m, L.kda) for L in m.layers if isinstance(L, KDALayer)]


def each_moe(**fields: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """An edit of a model: each expert layer's ``moe.<field>`` set to ``fields[field](moe)``."""
    return lambda m: [setattr(L.moe, f, v(L.moe)) for L in m.layers if L.moe is not None for f, v in fields.items()]


def kimi_decay(m: Any, K: Any) -> None:
    """Kimi Linear's decay, softplus(f + dt_b) * -a, in place of a bounded one (a decay all the same, of another form)."""
    K.lower_bound, K.A = 0.0, -K.A
