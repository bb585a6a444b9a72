"""Text from a diffusion language model (Dream, LLaDA, LLaDA-MoE, RND1: models/diffusion_lm.py), as llama.cpp's
``llama-diffusion-cli`` writes it: ``kvrun diffusion MODEL -p PROMPT``.

Such a model does not write left to right.  The sequence is the prompt then mask tokens up to ``max_length`` (llama.cpp's
``-ub``); each of ``steps`` denoising steps evaluates the whole sequence (attention both ways), proposes a token and a
confidence for every still-masked position, and unmasks some of them, until none is left:

* how many a step unmasks: Dream's timestep schedule (``eps``: at step s of N, a fraction 1 - t(s+1)/t(s) of those
  still masked, t(s) = 1 - s/N (1 - eps), the last step all), or LLaDA's blocks (``block_length``: the masks taken
  ``block_length`` positions at a time from the prompt's end, each block given steps / n_blocks steps and its masks
  spread evenly over them, the first steps one more) -- exactly one of the two, as llama.cpp asserts;
* which: the most confident (``algorithm``: ``confidence``, the proposed token's probability, LLaDA's low-confidence
  remasking and llama.cpp's default; ``entropy``, the candidates' entropy (llama.cpp's: the least sure first, unlike
  Dream's reference); ``margin``, the best probability minus the second's; ``random``), ties to the leftmost; or
  ``origin`` (Dream's): each masked position unmasked with probability transfer / masked, whatever its confidence.
  ``alg_temp`` > 0 draws the positions from softmax(confidence / alg_temp) instead of taking the most confident;
* the proposal: llama.cpp's chain top-k, top-p, temperature, draw; the probabilities every confidence reads are the
  candidates' that survive top-k and top-p, after the temperature.  Temperature 0 proposes each position's most
  probable token (deterministic).  (llama.cpp's chain at temperature 0 still *draws* from the untempered candidates,
  with its own random generator: there only ``--top-k 1`` is deterministic, and kvrun's draws at temperature > 0 are
  not llama.cpp's.)

Dream predicts each position from the logits of the position before it: ``shift_logits``, the file's
``diffusion.shift_logits`` (llama-diffusion-cli's default where the file says nothing: shifted).  The mask token is
the file's ``tokenizer.ggml.mask_token_id``.

Classifier-free guidance (``cfg_scale`` > 0, llama-diffusion-cli's ``--diffusion-cfg-scale``): each step runs the
model twice, on the sequence (conditional) and on it with every prompt position masked (unconditional), and reads
``uncond + (cfg_scale + 1) (cond - uncond)`` in float32, llama.cpp's arithmetic; 0 (the default) is one forward, the
logits as they are.  Not here: Gumbel noise, which llama-diffusion-cli has but no model's defaults use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..loaders.errors import KvrunError

#: llama.cpp's diffusion_algorithm, in its order (--diffusion-algorithm 0..4)
ALGORITHMS = ("origin", "entropy", "margin", "random", "confidence")

#: (step, total steps, the sequence now): called before each step's forward, as llama-diffusion-cli's step callback
StepCallback = Callable[[int, int, np.ndarray], None]


@dataclass
class DiffusionParams:
    """llama-diffusion-cli's settings (its defaults, but ``temperature``: kvrun's 0 is deterministic)."""

    steps: int = 128
    max_length: int = 512  # the whole sequence, prompt included (llama.cpp's n_ubatch)
    algorithm: str = "confidence"
    eps: float = 0.0  # Dream's timestep schedule (> 0), or
    block_length: int = 0  # LLaDA's blocks (> 0)
    alg_temp: float = 0.0
    temperature: float = 0.0
    top_k: int = 40
    top_p: float = 0.95
    seed: int | None = None
    shift_logits: bool | None = None  # None: the file's diffusion.shift_logits, else True
    cfg_scale: float = 0.0  # classifier-free guidance (> 0: a second, unconditional forward a step)

    def validate(self, n_prompt: int) -> None:
        """One-line KvrunErrors for settings llama-diffusion-cli would assert on or misread."""
        if isinstance(self.algorithm, int) or str(self.algorithm).isdigit():
            if not 0 <= int(self.algorithm) < len(ALGORITHMS):
                raise KvrunError(f"the diffusion algorithm must be one of 0..4 or {', '.join(ALGORITHMS)}, got {self.algorithm}")
            self.algorithm = ALGORITHMS[int(self.algorithm)]
        if self.algorithm not in ALGORITHMS:
            raise KvrunError(f"the diffusion algorithm must be one of {', '.join(ALGORITHMS)} (or 0..4), got {self.algorithm!r}")
        if self.steps < 1:
            raise KvrunError(f"--diffusion-steps must be >= 1, got {self.steps}")
        if self.eps < 0 or self.block_length < 0:
            raise KvrunError("--diffusion-eps and --diffusion-block-length must be >= 0")
        if (self.eps > 0) == (self.block_length > 0):
            raise KvrunError("give --diffusion-eps (Dream's timestep schedule, e.g. 0.001) or --diffusion-block-length "
                             "(LLaDA's blocks, e.g. 32), one of the two")  # fmt: skip
        if self.eps >= 1:
            raise KvrunError(f"--diffusion-eps must be below 1, got {self.eps}")
        if self.max_length <= n_prompt:
            raise KvrunError(f"the prompt is {n_prompt} tokens, --max-length {self.max_length}: nothing left to denoise; "
                             "raise --max-length or shorten the prompt")  # fmt: skip
        if self.block_length > 0:
            if self.max_length % self.block_length:
                raise KvrunError(f"--max-length {self.max_length} must be a multiple of --diffusion-block-length {self.block_length}")
            n_blocks = self.max_length // self.block_length
            if self.steps % n_blocks:
                raise KvrunError(f"--diffusion-steps {self.steps} must be a multiple of the {n_blocks} blocks "
                                 f"(--max-length {self.max_length} / --diffusion-block-length {self.block_length})")  # fmt: skip
        if self.temperature < 0 or self.alg_temp < 0:
            raise KvrunError("the temperatures must be >= 0")
        if not self.cfg_scale >= 0:  # (nan too)
            raise KvrunError(f"--diffusion-cfg-scale must be >= 0 (0: no guidance), got {self.cfg_scale}")
        if self.top_k < 0:
            raise KvrunError(f"top-k must be >= 0 (0 = off), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise KvrunError(f"top-p must be in (0, 1], got {self.top_p}")


def transfer_count(step: int, total: int, masked: int, eps: float) -> int:
    """How many of ``masked`` positions step ``step`` of ``total`` unmasks under Dream's timestep schedule (llama.cpp's
    float32 arithmetic, truncated as its int cast)."""
    f = np.float32
    t = f(1.0) - f(step) / f(total) * (f(1.0) - f(eps))
    s = f(1.0) - f(step + 1) / f(total) * (f(1.0) - f(eps))
    p = f(1.0) - s / t if step < total - 1 else f(1.0)
    return int(f(masked) * p)


def block_transfers(masked: int, steps: int) -> list[int]:
    """LLaDA's schedule within a block: ``masked`` spread over ``steps``, the first ``masked % steps`` one more."""
    base, extra = divmod(masked, steps)
    return [base + (i < extra) for i in range(steps)]


def candidates(logits: np.ndarray, top_k: int, top_p: float, temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """The chain's survivors for each row of ``logits`` [M, V]: ids [M, k] best first and their probabilities [M, k]
    (after top-k, top-p, temperature; a row's ids beyond its top-p cut have probability 0)."""
    M, V = logits.shape
    k = top_k if 0 < top_k < V else V
    idx = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    z = np.take_along_axis(logits, idx, axis=1).astype(np.float32)
    keep = np.ones(z.shape, bool)
    if top_p < 1.0:  # (the smallest prefix whose probability reaches top_p, at least one)
        p = np.exp(z - z[:, :1])
        p /= p.sum(axis=1, keepdims=True)
        cum = np.cumsum(p, axis=1)
        n_keep = np.minimum((cum < np.float32(top_p)).sum(axis=1) + 1, k)
        keep = np.arange(k)[None, :] < n_keep[:, None]
    if temperature > 0:
        z = z / np.float32(temperature)
    z = np.where(keep, z, -np.inf)
    p = np.exp(z - z[:, :1])
    p /= p.sum(axis=1, keepdims=True)
    return idx, p.astype(np.float32)


def propose(logits: np.ndarray, prm: DiffusionParams, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Each row's proposed token [M] and its confidence [M] under ``prm.algorithm``."""
    idx, p = candidates(logits, prm.top_k, prm.top_p, prm.temperature)
    M = len(idx)
    if prm.temperature > 0:
        u = rng.random(M)[:, None]
        pick = np.minimum((np.cumsum(p, axis=1) < u).sum(axis=1), p.shape[1] - 1)
    else:
        pick = np.zeros(M, np.int64)
    rows = np.arange(M)
    token = idx[rows, pick]
    alg = prm.algorithm
    if alg in ("confidence", "origin"):
        conf = p[rows, pick]
    elif alg == "entropy":
        # (llama.cpp's calculate_confidence returns the entropy itself, -sum p log p, so the *least* sure positions go
        # first, where Dream's reference takes minus the entropy: kvrun follows llama.cpp)
        conf = -(p * np.log(p + np.float32(1e-10))).sum(axis=1)
    elif alg == "margin":
        conf = p[:, 0] - p[:, 1] if p.shape[1] > 1 else p[:, 0]
    else:  # random
        conf = rng.random(M).astype(np.float32)
    return token, conf.astype(np.float32)


def guided(logits_of: Callable[[np.ndarray], np.ndarray], x: np.ndarray, n_prompt: int, mask_id: int, cfg_scale: float) -> np.ndarray:
    """A step's logits [L, V] for the sequence ``x``: the model's (``cfg_scale`` 0), or classifier-free guided as
    llama-diffusion-cli guides them: ``uncond + (cfg_scale + 1) * (cond - uncond)``, float32, where uncond are the
    logits of ``x`` with its first ``n_prompt`` positions (the prompt) masked."""
    if cfg_scale <= 0:
        return logits_of(x)
    cond = np.array(logits_of(x), np.float32)  # (a copy: logits_of may hand back the same buffer each call)
    un_x = x.copy()
    un_x[:n_prompt] = mask_id
    uncond = np.asarray(logits_of(un_x), np.float32)
    return uncond + (np.float32(cfg_scale) + np.float32(1.0)) * (cond - uncond)


def denoise(logits_of: Callable[[np.ndarray], np.ndarray], prompt: list[int], mask_id: int, prm: DiffusionParams,
            callback: StepCallback | None = None) -> np.ndarray:  # fmt: skip
    """llama-diffusion-cli's loop: the sequence [max_length] the prompt's tokens then the denoised ones.

    ``logits_of(tokens)``: the model's logits [max_length, n_vocab] for the whole sequence ``tokens`` (one forward,
    attention both ways).  ``prm`` validated.  The steps are llama.cpp's: a step that finds no mask ends its block."""
    n_in, L = len(prompt), prm.max_length
    x = np.full(L, mask_id, np.int32)
    x[:n_in] = prompt
    rng = np.random.default_rng(None if prm.seed is None or prm.seed < 0 else prm.seed)
    blocked = prm.block_length > 0
    n_blocks = L // prm.block_length if blocked else 1
    per_block = prm.steps // n_blocks
    shift = bool(prm.shift_logits)
    for b in range(n_blocks):
        lo, hi = (n_in + b * prm.block_length, min(n_in + (b + 1) * prm.block_length, L)) if blocked else (0, L)
        if blocked:
            schedule = block_transfers(int((x[lo:hi] == mask_id).sum()), per_block)
        for step in range(per_block):
            if callback is not None:
                callback(b * per_block + step, prm.steps, x)
            masked = np.flatnonzero(x == mask_id)
            masked = masked[(masked >= lo) & (masked < hi)]
            if not len(masked):
                break
            logits = guided(logits_of, x, n_in, mask_id, prm.cfg_scale)
            rows = np.maximum(masked - 1, 0) if shift else masked  # (Dream: position i from row i - 1; 0 from 0)
            count = schedule[step] if blocked else transfer_count(step, per_block, len(masked), prm.eps)
            if prm.algorithm == "origin":
                chosen = np.flatnonzero(rng.random(len(masked)) < np.float32(count) / np.float32(len(masked)))
                token, _ = propose(logits[rows[chosen]], prm, rng)
                x[masked[chosen]] = token
                continue
            token, conf = propose(logits[rows], prm, rng)
            count = min(count, len(masked))
            if count <= 0:
                continue
            if prm.alg_temp > 0:  # (drawn without replacement from softmax(conf / alg_temp))
                g = conf.astype(np.float64) / prm.alg_temp - np.log(-np.log(rng.random(len(conf))))
                chosen = np.argsort(-g, kind="stable")[:count]
            else:  # the most confident, ties to the leftmost
                chosen = np.lexsort((np.arange(len(conf)), -conf))[:count]
            x[masked[chosen]] = token[chosen]
    if callback is not None:
        callback(prm.steps, prm.steps, x)
    return x


def file_shift_logits(engine: Any) -> bool:
    """The file's ``diffusion.shift_logits`` (llama-diffusion-cli: shifted where it says nothing)."""
    v = engine.gguf.metadata.get("diffusion.shift_logits")
    return True if v is None else bool(v) if not isinstance(v, str) else v == "true"


def mask_token(engine: Any) -> int:
    """The file's mask token (tokenizer.ggml.mask_token_id), or a one-line error (llama.cpp asserts)."""
    v = engine.gguf.metadata.get("tokenizer.ggml.mask_token_id")
    if v is None or not 0 <= int(v) < engine.cfg.n_vocab:
        raise KvrunError(f"{engine.path}: no mask token (tokenizer.ggml.mask_token_id), which the denoising needs")
    return int(v)


def check_diffusion_model(engine: Any) -> None:
    """A one-line error unless ``engine`` holds a diffusion language model."""
    from ..models.diffusion_lm import DIFFUSION_ARCHS

    if engine.cfg.arch not in DIFFUSION_ARCHS:
        raise KvrunError(f"{engine.cfg.arch} is not a diffusion language model ({', '.join(DIFFUSION_ARCHS)}); "
                         "use `kvrun run` for it")  # fmt: skip


def diffuse(engine: Any, prompt: list[int], prm: DiffusionParams, callback: StepCallback | None = None) -> np.ndarray:
    """The denoised sequence [max_length] (prompt first) of ``engine``'s diffusion model; ``prm`` validated here, its
    ``shift_logits`` filled from the file where None.  The engine's context and batch must hold max_length."""
    check_diffusion_model(engine)
    prm.validate(len(prompt))
    if prm.shift_logits is None:
        prm.shift_logits = file_shift_logits(engine)
    L = prm.max_length
    if L > engine.n_ctx or L > engine.n_batch:
        raise KvrunError(f"--max-length {L} is more than the model was loaded for (context {engine.n_ctx}, batch "
                         f"{engine.n_batch}): load it with n_ctx and n_batch >= {L}")  # fmt: skip
    mask_id = mask_token(engine)
    cache = engine.cache_for(None, L, L)
    out = np.empty((L, engine.cfg.n_vocab), np.float32)

    pos = np.arange(L, dtype=np.int32)

    def forward(tokens: np.ndarray) -> None:
        cache.reset()  # (each step a fresh sequence from position 0)
        engine.model.forward(tokens, pos, cache, np.arange(L), out)

    def logits_of(tokens: np.ndarray) -> np.ndarray:
        engine.batcher.call(lambda: forward(tokens))  # (on the engine's model thread, as every CPU kernel: runtime/batcher.py)
        return out

    return denoise(logits_of, list(prompt), mask_id, prm, callback)


def progress_line(step: int, total: int) -> str:
    """llama-diffusion-cli's progress bar: ``diffusion step: 3/128 [=   ...] 2%``."""
    bars = step * 50 // total
    return f"diffusion step: {step}/{total} [{'=' * bars}{' ' * (50 - bars)}] {step * 100 // total}%"


def visual_frame(step: int, total: int, tokens: np.ndarray, n_prompt: int, mask_id: int, piece: Callable[[int], str]) -> str:
    """llama-diffusion-cli's --diffusion-visual frame: the screen cleared, the progress bar, the text after the prompt so
    far, each still-masked position a space."""
    text = "".join(" " if int(t) == mask_id else piece(int(t)) for t in tokens[n_prompt:])
    return f"\033[2J\033[H{progress_line(step, total)}\n {text}\n"



def refuse_text_generation(arch: str) -> None:
    """``kvrun run`` on a model of architecture ``arch`` (the config the engine read): a diffusion model is refused in
    one line pointing at ``kvrun diffusion``."""
    from ..models.diffusion_lm import DIFFUSION_ARCHS, diffusion_only

    if arch in DIFFUSION_ARCHS:
        raise KvrunError(diffusion_only(arch))


def diffusion_text(model: Any, prompt: str, prm: DiffusionParams, chat_template: bool = True,
                   callback: Callable[[int, int, np.ndarray, int, int], None] | None = None) -> str:  # fmt: skip
    """The text a diffusion model (``model``: a runtime.api.Model) writes after ``prompt``, as llama-diffusion-cli
    prints it: the prompt as the chat template's user turn (``chat_template``; else as it is), tokenized with the
    vocabulary's BOS and special tokens parsed, denoised, the tokens after it detokenized without control tokens'
    text.  ``callback(step, total, tokens, n_prompt, mask_id)`` before each step."""
    check_diffusion_model(model.engine)
    text = model.render([{"role": "user", "content": prompt}]) if chat_template else prompt
    ids = model.tokenize(text)
    mask_id = mask_token(model.engine)
    hook = None if callback is None else (lambda s, t, x: callback(s, t, x, len(ids), mask_id))
    out = diffuse(model.engine, ids, prm, hook)
    return model.tokenizer.decode([int(t) for t in out[len(ids):]], skip_special=True)
