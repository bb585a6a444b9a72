"""One spec for a compressed KV cache: widths, residual window, rotation, mixed precision, eviction, merging.

``KVConfig.parse("2,policy=h2o,ratio=0.25")``: the first bare number is
``bits``, the rest are ``key=value`` pairs naming the fields below.
``KVConfig.preset("balanced")`` gives a named default.  ``str(cfg)`` prints
the canonical spec back (only fields that differ from the defaults).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

BITS = (16, 8, 4, 3, 2)
MERGES = ("mean", "keepkv")

# residual window (tokens kept in fp16) when not given.  2 bits needs one: on
# SmolLM2 at ctx 512, 32 tokens instead of 64 cost +7.5% instead of +4.2% PPL
# (first 3 windows), and 80 is the most that keeps SmolLM2 at 3.2 bits per value
# at ctx 2048 (GPL-3, all 14 windows of 512: 64 -> +6.2%, 80 -> +5.1%);
# at 4 bits, groups of 64 (DEFAULT_GROUP) pay for 36 tokens, which Gemma 3 (15
# sliding-window layers of 512, where the window is a large share) needs: GPL-3,
# ctx 2048, vs groups of 32 and 24 tokens, +1.08% -> +0.26% PPL (KL 0.0085 ->
# 0.0076) at 4.87 instead of 4.93 bits per value; SmolLM2 +0.57% -> +0.37%
DEFAULT_RESIDUAL = {16: 32, 8: 32, 4: 36, 3: 24, 2: 80}
# with a warm tier (2 bits, no policy) the tier takes over from the fp16 window: 16 tokens
# (8 or 12 cost Gemma 3's sliding-window layers far more KL, and 8 cost SmolLM2 +2.35% ->
# +5.55% PPL), except in the global layers of a model that also has sliding-window
# layers, where 8 tokens free bits for a larger warm tier (Gemma 3, GPL-3, ctx 2048, at
# 3.19 bits/value: 16-token window and 184 warm tokens KL 0.052, 8 and 294 KL 0.047)
DEFAULT_RESIDUAL_WARM = 16
DEFAULT_RESIDUAL_WARM_HYBRID_GLOBAL = 8

# warm tier (quantized tokens, newest first, whose keys keep ``warm_bits``) when not given:
# keys carry most of the 2-bit error (SmolLM2, GPL-3, ctx 2048: 4-bit keys alone
# KL 0.096 -> 0.022, 4-bit values alone -> 0.070), and attention falls mostly on
# recent tokens: the ~245 newest quantized tokens at 4 bits (K and V) took KL
# 0.096 -> 0.041, importance-chosen (h2o) ones only to 0.059.
# Sliding-window layers put every quantized slot in the tier: their whole window
# is recent, and on Gemma 3 (GPL-3, ctx 2048, 2 bits) they carry the damage: its
# sliding-window layers alone at 2 bits KL 0.052, its global layers alone 0.015;
# 4-bit keys over the whole window took the model's KL 0.066 -> 0.032.  Global
# layers then get the largest tier that keeps the whole cache (everything counted)
# at DEFAULT_WARM_TARGET bits per value (``cache.factory.make_cache`` sizes it).
# 3 bits gets one too (GPL-3, ctx 2048, against 3-bit keys throughout at 3.51 / 3.72 bits:
# SmolLM2 KL 0.0385 -> 0.019 at 3.70 bits; Gemma 3 0.0364 -> 0.0344, top-1 0.880 -> 0.901)
DEFAULT_WARM_TARGET = {2: 3.19, 3: 3.70}
DEFAULT_WARM_SHARE = 0.35  # a global layer's tier when a layer cache is built on its own

# group size when not given: at 2 bits the default warm tier is paid for with groups of 64
# (0.25 instead of 0.5 bit of metadata per value), and at 4 bits the longer fp16 window.
# At 3 bits groups of 64 save 0.25 bit for little KL (GPL-3, ctx 1024, before 3 bits had a
# warm tier: SmolLM2 3.93 -> 3.68 bits, KL 0.018 -> 0.021; Gemma 3 4.08 -> 3.84, KL 0.021 -> 0.027)
DEFAULT_GROUP = {2: 64, 3: 64, 4: 64}

PRESETS: dict[str, str] = {
    "lossless": "8",  # 8-bit K and V: KL ~ 1e-4 on SmolLM2
    "balanced": "4",  # 4-bit, rotated: ~4.5 bits/value
    "edge": "2,policy=snapkv,ratio=0.5",  # 2-bit and half the tokens: +4.4% PPL on SmolLM2 at ctx 1024
}


def _known_policies() -> tuple[str, ...]:
    from .policies import POLICIES

    return tuple(sorted(POLICIES))


@dataclass(frozen=True)
class KVConfig:
    """How a KV cache is compressed.

    Attributes
    ----------
    bits : int
        Width of the quantized slots, one of 16, 8, 4, 3, 2 (16: fp16, no quantization).
    bits_k, bits_v : int or None
        Separate key / value widths (None: ``bits``).
    group : int or None
        Values per quantization group (per token, along the head dimension;
        None: per-width default, 64 at 2 bits with the warm tier and at 3 and 4 bits, else 32).
    residual : int or None
        Most recent tokens kept in fp16 before they are quantized (None: per-width default).
    rotate : bool or None
        Hadamard-rotate K and V before quantizing (None: on below 8 bits; a head that is no power of two rotates
        by blocks, the largest power of two dividing it, by default where those are >= 8 channels).
    center : bool or None
        Subtract the keys' per-head mean (from the first fp16 window) before
        quantizing; exact for attention, which is shift-invariant (None: on
        when K is quantized).
    smooth : bool or None
        Scale key channels by ``(query energy / key variance)^(1/4)`` and the
        queries inversely before quantizing (exact; None: on below 8 bits).
    mixed : str or None
        ``"HI/LO"`` widths, e.g. ``"8/2"``: the most important tokens (by the
        policy's score) keep HI bits, the rest LO bits (MiKV).  LO overrides ``bits``.
    hi_frac : float
        Share of the quantized slots held at the HI width when ``mixed``.
    policy : str or None
        Eviction policy name (see ``kvrun.cache.policies``); None: keep every token.
    budget : int
        Tokens kept per global layer, sinks and residual window included (0: from ``ratio``).
    ratio : float
        Budget as a share of the context when ``budget`` is 0 (0: the whole context).
    sinks : int
        First tokens never evicted and kept in fp16 (attention sinks).
    merge : str or None
        Fold evicted tokens into their most similar kept token: ``mean`` or ``keepkv``.
    warm : int or None
        Newest quantized tokens (just out of the fp16 window) whose keys keep
        ``warm_bits``; older ones are re-quantized to the low width (None: at 2
        and 3 bits, all of a sliding-window layer's quantized slots and, in global
        layers, as many as keep the cache at ``DEFAULT_WARM_TARGET`` bits per
        value; 0: off).  Only without a policy or ``mixed``, which own the two pools.
    warm_bits : int
        Key width of the warm tier.
    """

    bits: int = 16
    bits_k: int | None = None
    bits_v: int | None = None
    group: int | None = None
    residual: int | None = None
    rotate: bool | None = None
    center: bool | None = None
    smooth: bool | None = None
    mixed: str | None = None
    hi_frac: float = 0.25
    policy: str | None = None
    budget: int = 0
    ratio: float = 0.0
    sinks: int = 4
    merge: str | None = None
    warm: int | None = None
    warm_bits: int = 4

    # ------------------------------------------------------------ derived
    @property
    def widths(self) -> tuple[int, int]:
        """(bits of K, bits of V) in the low-precision pool."""
        lo = self.mixed_widths[1] if self.mixed else self.bits
        return (self.bits_k or lo, self.bits_v or lo)

    @property
    def mixed_widths(self) -> tuple[int, int]:
        """(HI, LO) of ``mixed``."""
        try:
            hi, lo = (int(x) for x in str(self.mixed).split("/"))
        except ValueError:
            raise ValueError(f"mixed={self.mixed!r} is not HI/LO widths; write it like mixed=8/2") from None
        return hi, lo

    @property
    def residual_tokens(self) -> int:
        """The fp16 window of a layer (see :meth:`residual_for`)."""
        return self.residual_for(False)

    def residual_for(self, hybrid_global: bool) -> int:
        """The fp16 window of a layer; ``hybrid_global``: a global layer of a model
        that also has sliding-window layers."""
        if self.residual is not None:
            return self.residual
        if not self.is_compressed:
            return 0
        if not self.warm_on:
            return DEFAULT_RESIDUAL[min(self.widths)]
        return DEFAULT_RESIDUAL_WARM_HYBRID_GLOBAL if hybrid_global else DEFAULT_RESIDUAL_WARM

    @property
    def warm_on(self) -> bool:
        """Whether the cache has a warm tier (the window and group defaults follow it)."""
        if self.policy is not None or self.mixed is not None or self.widths[0] >= self.warm_bits:
            return False
        return self.warm > 0 if self.warm is not None else self.widths[0] in DEFAULT_WARM_TARGET

    def warm_slots(self, n_quantized: int, sliding: bool = False) -> int:
        """Slots of the warm tier in a layer with ``n_quantized`` quantized slots (0: none).

        Without an explicit ``warm``: all of a sliding-window layer's, and
        :data:`DEFAULT_WARM_SHARE` of a global layer's (``make_cache`` gives
        global layers an explicit size that fits the whole cache's bit target).
        """
        if not self.warm_on:
            return 0
        if self.warm is not None:
            return min(self.warm, n_quantized)
        return n_quantized if sliding else int(round(DEFAULT_WARM_SHARE * n_quantized))

    @property
    def rotated(self) -> bool:
        return self.rotate if self.rotate is not None else min(self.widths) < 8

    @property
    def centered(self) -> bool:
        return self.center if self.center is not None else self.widths[0] < 16

    @property
    def smoothed(self) -> bool:
        return self.smooth if self.smooth is not None else self.widths[0] < 8

    @property
    def is_compressed(self) -> bool:
        """False when the plain fp16 cache does the same job."""
        return min(self.widths) < 16 or self.policy is not None or self.mixed is not None

    def budget_tokens(self, n_ctx: int) -> int:
        """Tokens a global layer keeps (``n_ctx`` when nothing is evicted)."""
        if self.policy is None:
            return n_ctx
        if self.budget > 0:
            return min(self.budget, n_ctx)
        if self.ratio > 0:
            return max(1, min(n_ctx, int(round(self.ratio * n_ctx))))
        return n_ctx

    @property
    def default_group(self) -> int:
        w = min(self.widths)
        if w == 2 and not self.warm_on:
            return 32  # a policy or mixed precision: 2-bit codes without the warm tier need the finer groups
        return DEFAULT_GROUP.get(w, 32)

    def resolved(self) -> KVConfig:
        """A copy with the per-width defaults that change the layout (the group size) filled in."""
        return self if self.group is not None else replace(self, group=self.default_group)

    # ------------------------------------------------------------ checks
    def validate(self, n_ctx: int) -> KVConfig:
        """Raise ``ValueError`` (one line: the problem and the fix) for an impossible combination.

        Returns the configuration with its defaults resolved (:meth:`resolved`).
        """
        self = self.resolved()
        for name in ("bits", "bits_k", "bits_v"):
            b = getattr(self, name)
            if b is not None and b not in BITS:
                raise ValueError(f"{name}={b} is not supported; use one of {', '.join(map(str, BITS))}")
        if self.mixed is not None:
            hi, lo = self.mixed_widths
            if hi not in BITS or lo not in BITS or hi <= lo:
                raise ValueError(f"mixed={self.mixed} needs HI > LO, both in {', '.join(map(str, BITS))}; e.g. mixed=8/2")
            if not 0.0 < self.hi_frac < 1.0:
                raise ValueError(f"hi_frac={self.hi_frac} must be between 0 and 1, e.g. hi_frac=0.25")
        if self.group < 8 or self.group & (self.group - 1):
            raise ValueError(f"group={self.group} must be a power of two >= 8, e.g. group=32")
        if self.policy is not None and self.policy not in _known_policies():
            raise ValueError(f"unknown policy {self.policy!r}; known: {', '.join(_known_policies())}")
        if self.merge is not None and self.merge not in MERGES:
            raise ValueError(f"unknown merge {self.merge!r}; known: {', '.join(MERGES)}")
        if self.merge is not None and self.policy is None:
            raise ValueError(f"merge={self.merge} folds evicted tokens but nothing is evicted; add a policy, e.g. policy=h2o,ratio=0.25")
        if self.warm_bits not in BITS:  # checked even where no warm tier is made: a typo fails at once, not deep in a run
            raise ValueError(f"warm_bits={self.warm_bits} is not supported; use one of {', '.join(map(str, BITS))}, e.g. warm_bits=4")
        if self.warm is not None and self.warm > 0:
            if self.policy is not None or self.mixed is not None:
                raise ValueError("warm tiers the pools by age and needs neither a policy nor mixed; drop one of them")
            if self.warm_bits not in BITS or self.warm_bits <= self.widths[0]:
                raise ValueError(f"warm_bits={self.warm_bits} must be a width above the keys' {self.widths[0]} bits, e.g. warm_bits=4")
        if self.warm is not None and self.warm < 0:
            raise ValueError(f"warm={self.warm} must be >= 0 tokens")
        if self.sinks < 0 or self.residual_tokens < 0:
            raise ValueError("sinks and residual must be >= 0")
        if not 0.0 <= self.ratio <= 1.0:
            raise ValueError(f"ratio={self.ratio} must be in (0, 1], the share of the context kept")
        if self.budget < 0:
            raise ValueError(f"budget={self.budget} must be >= 0 tokens")
        if (self.budget or self.ratio) and self.policy is None:
            raise ValueError("a budget or ratio evicts tokens, which needs a policy; add e.g. policy=h2o")
        if self.policy is not None:
            if self.residual_tokens < 1:
                raise ValueError("an eviction policy needs residual >= 1 so the newest token is never its victim")
            need = self.sinks + self.residual_tokens + 1
            if self.budget_tokens(n_ctx) < need:
                raise ValueError(
                    f"budget of {self.budget_tokens(n_ctx)} tokens is below sinks + residual + 1 = {need}; "
                    f"raise budget/ratio or lower sinks/residual"
                )
        return self

    # ------------------------------------------------------------ text
    @classmethod
    def parse(cls, spec: str) -> KVConfig:
        """``"2,policy=h2o,ratio=0.25"`` -> KVConfig (a preset name works too)."""
        spec = spec.strip()
        if spec in PRESETS:
            return cls.preset(spec)
        kw: dict[str, object] = {}
        types = {f.name: f.type for f in fields(cls)}
        for i, part in enumerate(p.strip() for p in spec.split(",") if p.strip()):
            if "=" not in part:
                if i != 0:
                    raise ValueError(f"{part!r}: only the first item may be a bare number (the bits); write key=value")
                kw["bits"] = _int(part, "bits")
                continue
            key, val = (s.strip() for s in part.split("=", 1))
            key = {"k": "bits_k", "v": "bits_v", "kbits": "bits_k", "vbits": "bits_v"}.get(key, key)
            if key not in types:
                raise ValueError(f"unknown KV cache option {key!r}; known: {', '.join(types)}")
            kw[key] = _convert(key, val, str(types[key]))
        return cls(**kw)  # type: ignore[arg-type]

    @classmethod
    def preset(cls, name: str) -> KVConfig:
        """A named configuration: ``lossless``, ``balanced`` or ``edge``."""
        if name not in PRESETS:
            raise ValueError(f"unknown KV preset {name!r}; known: {', '.join(PRESETS)}")
        return cls.parse(PRESETS[name])

    def __str__(self) -> str:
        parts = [str(self.bits)]
        default = KVConfig()
        for f in fields(self):
            if f.name == "bits":
                continue
            v = getattr(self, f.name)
            if f.name == "group" and v == self.default_group:
                continue  # a resolved default reads back as itself
            if v != getattr(default, f.name):
                if isinstance(v, bool):
                    v = int(v)
                parts.append(f"{f.name}={v}")
        return ",".join(parts)

    def with_(self, **kw: object) -> KVConfig:
        """A copy with some fields changed."""
        return replace(self, **kw)  # type: ignore[arg-type]


def _int(s: str, key: str) -> int:
    try:
        return int(s)
    except ValueError:
        raise ValueError(f"{key}={s!r} is not an integer") from None


def _convert(key: str, val: str, typ: str) -> object:
    if val.lower() in ("none", "") and "None" in typ:
        return None
    if "bool" in typ:
        if val.lower() in ("1", "true", "yes", "on"):
            return True
        if val.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{key}={val!r} is not a boolean; use 1 or 0")
    if "float" in typ:
        try:
            return float(val)
        except ValueError:
            raise ValueError(f"{key}={val!r} is not a number") from None
    if "int" in typ:
        return _int(val, key)
    return val
