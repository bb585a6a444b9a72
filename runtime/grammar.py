"""Grammar-constrained generation: llama.cpp's ``--grammar`` / ``--json-schema``, OpenAI's
``response_format: {"type": "json_schema"}``, Ollama's ``format: {schema}``, and JSON mode (Ollama's
``format: "json"``, OpenAI's ``{"type": "json_object"}``): the grammar of any one JSON object,
:data:`JSON_OBJECT`.

Before each draw every token that would take the text out of the grammar's language gets a logit of
-inf; end-of-generation tokens are allowed only where the text may end, and are then the only ones
allowed once nothing else may follow.  A reply cut by max_tokens may still end mid-grammar.

:class:`Matcher` owns the tables of ``ops/cpu/grammar.py``'s lazily built automaton for one grammar
and grows them; it is kept across requests with the same grammar (:func:`matcher_for`), so a
server answering the same schema again finds its states and transitions already made.  A state's
whole mask is kept too (:data:`MASK_CACHE_BYTES`): a string's content, a number's digits come
back to the same state token after token.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from typing import Any, Callable

import numpy as np

from ..loaders.tokenizer import Tokenizer
from ..ops.cpu import grammar as kern
from .gbnf import Grammar, GrammarError, compiled
from .jsonschema import schema_to_gbnf

MASK_CACHE_BYTES = 64 << 20  #: the masks kept per grammar, in bytes (a byte a vocabulary entry)
MATCHERS_KEPT = 8  #: grammars whose automata are kept for the next request
#: JSON mode's grammar: one JSON object, any keys and values (whitespace as jsonschema.py bounds it)
JSON_OBJECT = schema_to_gbnf({"type": "object"})


class VocabIndex:
    """The vocabulary sorted by bytes, for :func:`ops.cpu.grammar.token_mask` (control tokens, which
    have no bytes, left out: end-of-generation is decided apart)."""

    def __init__(self, tok: Tokenizer) -> None:
        data, off = tok.vocab_bytes()
        pieces = [data[off[i] : off[i + 1]].tobytes() for i in range(len(off) - 1)]
        order = sorted((i for i, p in enumerate(pieces) if p), key=pieces.__getitem__)
        self.vid = np.array(order, np.int64)  # [n] token ids in byte order
        lens = np.array([len(pieces[i]) for i in order], np.int64)
        self.voff = np.zeros(len(order) + 1, np.int64)
        np.cumsum(lens, out=self.voff[1:])
        self.vdata = np.frombuffer(b"".join(pieces[i] for i in order), np.uint8)
        self.lcp = kern.shared_prefixes(self.vdata, self.voff)  # [n] bytes shared with the token before
        self.depth = np.zeros(int(lens.max(initial=0)) + 1, np.int32)  # scratch: the state at each prefix length
        self.matchers: OrderedDict[tuple[str, int], Matcher] = OrderedDict()  # grammars' automata, last used last


_indexes: weakref.WeakKeyDictionary[Tokenizer, VocabIndex] = weakref.WeakKeyDictionary()


def vocab_index(tok: Tokenizer) -> VocabIndex:
    """The tokenizer's :class:`VocabIndex`, built once (~0.1 s for 49k tokens, ~0.6 s for 262k)."""
    idx = _indexes.get(tok)
    if idx is None:
        idx = _indexes[tok] = VocabIndex(tok)
    return idx


class Matcher:
    """One grammar's automaton: states are ints; :meth:`advance` and :meth:`mask` walk it."""

    def __init__(self, grammar: Grammar, n_vocab: int) -> None:
        self.grammar = grammar
        self.g = grammar.tables()
        self.n_vocab = n_vocab
        self.out = np.zeros(1 << 14, np.int32)  # scratch: one character's new stacks
        self.work = np.zeros((1 << 14, 2), np.int32)  # scratch: the expansion's worklist
        self._alloc(nodes=1 << 12, states=1 << 10, sdat=1 << 14)
        self.masks: OrderedDict[int, np.ndarray] = OrderedDict()
        self.max_masks = max(4, MASK_CACHE_BYTES // max(n_vocab, 1))
        self.start = self._call(kern.start_state, self.grammar.root, self.out, self.work)

    def _alloc(self, nodes: int, states: int, sdat: int, old: tuple | None = None) -> None:
        node = np.zeros((nodes, 2), np.int32)
        st = np.zeros((states, 4), np.int32)
        sd = np.zeros(sdat, np.int32)
        trans = np.full((states, 256), kern.UNKNOWN, np.int32)
        meta = np.zeros(4, np.int64)
        if old is not None:
            o_node, _, o_sd, o_st, _, o_trans, o_meta = old
            n, s, used = int(o_meta[0]), int(o_meta[1]), int(o_meta[2])
            node[:n], st[:s], sd[:used], trans[:s] = o_node[:n], o_st[:s], o_sd[:used], o_trans[:s]
            meta[:] = o_meta
        nh = np.full(2 * nodes, -1, np.int32)
        sh = np.full(2 * states, -1, np.int32)
        kern.rehash_nodes(node, int(meta[0]), nh)
        kern.rehash_states(sd, st, int(meta[1]), sh)
        self.t = (node, nh, sd, st, sh, trans, meta)

    def _grow(self) -> None:
        node, _, sd, st, _, _, meta = self.t
        n, s, used = int(meta[0]), int(meta[1]), int(meta[2])
        grow = lambda cap, fill: cap * 2 if 2 * fill >= cap else cap  # noqa: E731
        self._alloc(grow(node.shape[0], n), grow(st.shape[0], s), grow(sd.size, used + self.out.size), old=self.t)

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(g, t, *args)``, growing the tables and again while it finds them full."""
        while True:
            r = fn(self.g, self.t, *args)
            if r == kern.FULL:
                self._grow()
                continue
            if r == kern.AMBIGUOUS:
                raise GrammarError("the grammar is too ambiguous to follow (too many parses at once); "
                                   "make its alternatives start differently")  # fmt: skip
            return r

    def advance(self, state: int, data: bytes) -> int:
        """The state after ``data``, or :data:`ops.cpu.grammar.DEAD`."""
        return int(self._call(kern.advance, state, np.frombuffer(data, np.uint8), self.out, self.work))

    def can_end(self, state: int) -> bool:
        return bool(kern.can_end(self.t, state))

    def only_end(self, state: int) -> bool:
        return bool(kern.only_end(self.t, state))

    def mask(self, state: int, vocab: VocabIndex) -> np.ndarray:
        """uint8 [n_vocab]: 1 for each token that may come next from ``state`` (end tokens: 0)."""
        m = self.masks.get(state)
        if m is None:
            m = np.zeros(self.n_vocab, np.uint8)
            self._call(kern.token_mask, state, vocab.vdata, vocab.voff, vocab.vid, vocab.lcp, m, vocab.depth, self.out, self.work)
            self.masks[state] = m
            if len(self.masks) > self.max_masks:
                self.masks.popitem(last=False)
        return m


def matcher_for(text: str, vocab: VocabIndex, n_vocab: int) -> Matcher:
    """The :class:`Matcher` of a GBNF grammar text for a vocabulary (parsed, or kept from an earlier
    request: its masks are the vocabulary's, so each vocabulary keeps its own)."""
    key = (text, n_vocab)
    m = vocab.matchers.pop(key, None) or Matcher(compiled(text), n_vocab)
    vocab.matchers[key] = m
    while len(vocab.matchers) > MATCHERS_KEPT:
        vocab.matchers.popitem(last=False)
    return m


class GrammarConstraint:
    """The constraint of one generation: :meth:`mask` the logits before a draw, :meth:`accept` the token drawn."""

    def __init__(self, tokenizer: Tokenizer, n_vocab: int, grammar: str, trigger: str | None = None) -> None:
        self.tokenizer = tokenizer
        self.vocab = vocab_index(tokenizer)
        self.matcher = matcher_for(grammar, self.vocab, n_vocab)
        self.state = self.matcher.start
        self.eot = np.array(sorted(t for t in tokenizer.eot_ids if t < n_vocab), np.int64)
        # lazy: free text until ``trigger`` appears in it, the grammar from the trigger's first byte on
        self.trigger = trigger.encode() if trigger else None
        self.active = self.trigger is None
        self.seen = bytearray()  # lazy: the tail of the text so far, where the trigger may be starting

    def allowed(self) -> np.ndarray:
        """bool [n_vocab]: the tokens that may come next."""
        ok = self.matcher.mask(self.state, self.vocab).astype(bool)
        ok[self.eot] = self.matcher.can_end(self.state)
        if not ok.any():  # (a grammar whose text cannot go on nor end here: ending beats a stuck draw)
            ok[self.eot] = True
        return ok

    def mask(self, logits: np.ndarray) -> np.ndarray:
        """``logits`` [n_vocab] with -inf wherever the next token may not go (a lazy grammar not yet
        triggered: unchanged)."""
        if not self.active:
            return np.asarray(logits, np.float32)
        return np.where(self.allowed(), np.asarray(logits, np.float32), np.float32(-np.inf))

    def accept(self, tok: int) -> None:
        if tok in self.eot:
            return
        if not self.active:
            if self.trigger is None:  # (a trigger whose continuation the grammar refused: free to the end)
                return
            self.seen += self.tokenizer.token_bytes(tok, special=True)
            at = self.seen.find(self.trigger)
            if at < 0:
                del self.seen[: max(0, len(self.seen) - len(self.trigger) + 1)]
                return
            s = self.matcher.advance(self.matcher.start, bytes(self.seen[at:]))
            self.active, self.state = s >= 0, max(s, self.state)
            self.trigger = self.trigger if s >= 0 else None
            return
        s = self.matcher.advance(self.state, self.tokenizer.token_bytes(tok, special=False))
        if s < 0:  # (only a token the mask refused: the caller drew outside it)
            raise GrammarError(f"token {tok} does not continue the grammar")
        self.state = s
