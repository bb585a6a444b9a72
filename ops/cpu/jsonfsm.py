"""JSON mode's automaton (Numba): which tokens may come next so that the text stays a prefix of one
JSON object (RFC 8259), as llama.cpp's ``json.gbnf`` grammar constrains Ollama's ``format: "json"``.

The state is a small int32 array (:data:`STATE_SIZE`): the mode, its sub-state, a run of whitespace,
the nesting depth, then the stack of open containers (object / array).  :func:`token_mask` runs
every token's bytes from the current state (on a copy) and marks the ones that stay valid (most
are settled by their first byte, string content by a flag computed once);
:func:`advance` runs the chosen token's bytes on the state itself.  About 50 k tokens of ~5 bytes
a step: a few hundred microseconds, per generated token in JSON mode only.

Whitespace between tokens is allowed in runs of at most :data:`MAX_WS` bytes (a greedy model may
otherwise pad forever).  String contents are any bytes but ``"``, ``\\`` and controls, escapes
checked (``\\uXXXX`` too); UTF-8 inside strings is not validated.  Numbers follow the grammar
``-?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?``.
"""

from __future__ import annotations

import numba as nb
import numpy as np

MAX_DEPTH = 64  #: nesting a JSON text may reach
MAX_WS = 16  #: whitespace bytes in a row
STATE_SIZE = 4 + MAX_DEPTH

# modes
START, VALUE, ARR_FIRST, KEY_FIRST, KEY, COLON, AFTER, STRING, ESCAPE, UNICODE, NUMBER, LITERAL, DONE = range(13)
# number sub-states: after '-', after a leading 0, in the integer digits, after '.', in the fraction,
# after e/E, after its sign, in the exponent digits
N_MINUS, N_ZERO, N_INT, N_DOT, N_FRAC, N_E, N_ESIGN, N_EXP = range(8)
OBJ, ARR = 1, 2
_LITERALS = (b"true", b"false", b"null")
_LIT = np.frombuffer(b"true\0false\0null\0", np.uint8)
_LIT_AT = np.array([0, 5, 11], np.int64)  # where each literal starts in _LIT


def new_state() -> np.ndarray:
    s = np.zeros(STATE_SIZE, np.int32)
    s[0] = START
    return s


@nb.njit(inline="always", cache=True)
def _ws(c):
    return c == 32 or c == 9 or c == 10 or c == 13


@nb.njit(cache=True)
def _value_start(s, c):
    """Byte c begins a value (mode VALUE or ARR_FIRST); False if it cannot."""
    if c == 123:  # {
        if s[3] >= MAX_DEPTH:
            return False
        s[4 + s[3]] = OBJ
        s[3] += 1
        s[0] = KEY_FIRST
    elif c == 91:  # [
        if s[3] >= MAX_DEPTH:
            return False
        s[4 + s[3]] = ARR
        s[3] += 1
        s[0] = ARR_FIRST
    elif c == 34:  # "
        s[0], s[1] = STRING, 0  # sub 0: a value string
    elif c == 45:  # -
        s[0], s[1] = NUMBER, N_MINUS
    elif c == 48:  # 0
        s[0], s[1] = NUMBER, N_ZERO
    elif 49 <= c <= 57:
        s[0], s[1] = NUMBER, N_INT
    elif c == 116 or c == 102 or c == 110:  # t f n
        s[0] = LITERAL
        s[1] = _LIT_AT[0] + 1 if c == 116 else (_LIT_AT[1] + 1 if c == 102 else _LIT_AT[2] + 1)
    else:
        return False
    return True


@nb.njit(cache=True)
def _close(s):
    """A value just ended: AFTER, or DONE when it was the top-level object."""
    s[0] = DONE if s[3] == 0 else AFTER


@nb.njit(cache=True)
def step(s, c):
    """Feed byte c to state s (in place); False if the text is no longer a JSON prefix."""
    m = s[0]
    if m == STRING:
        if c == 34:
            if s[1] == 1:  # a key
                s[0] = COLON
            else:
                _close(s)
            s[2] = 0
            return True
        if c == 92:
            s[0] = ESCAPE
            return True
        return c >= 32
    if m == ESCAPE:
        if c == 117:  # \u
            s[0] = UNICODE
            s[2] = 0  # hex digits seen (the whitespace counter is free inside a string)
            return True
        if c == 34 or c == 92 or c == 47 or c == 98 or c == 102 or c == 110 or c == 114 or c == 116:
            s[0] = STRING
            return True
        return False
    if m == UNICODE:
        if (48 <= c <= 57) or (65 <= c <= 70) or (97 <= c <= 102):
            s[2] += 1
            if s[2] == 4:
                s[0], s[2] = STRING, 0
            return True
        return False
    if m == LITERAL:
        want = _LIT[s[1]]
        if c != want:
            return False
        s[1] += 1
        if _LIT[s[1]] == 0:
            _close(s)
        return True
    if m == NUMBER:
        sub = s[1]
        digit = 48 <= c <= 57
        if sub == N_MINUS:
            if c == 48:
                s[1] = N_ZERO
                return True
            if digit:
                s[1] = N_INT
                return True
            return False
        if sub == N_DOT or sub == N_E or sub == N_ESIGN:
            if digit:
                s[1] = N_FRAC if sub == N_DOT else N_EXP
                return True
            if sub == N_E and (c == 43 or c == 45):
                s[1] = N_ESIGN
                return True
            return False
        # N_ZERO, N_INT, N_FRAC, N_EXP: the number may end here
        if digit and sub != N_ZERO:
            return True
        if c == 46 and (sub == N_ZERO or sub == N_INT):
            s[1] = N_DOT
            return True
        if (c == 101 or c == 69) and sub != N_EXP:
            s[1] = N_E
            return True
        _close(s)  # the number ended: c is the next structural byte, read below
        m = s[0]
    # structural modes: whitespace first
    if _ws(c):
        if m == DONE or s[2] >= MAX_WS:
            return False
        s[2] += 1
        return True
    s[2] = 0
    if m == START:
        if c != 123:
            return False
        s[4], s[3], s[0] = OBJ, 1, KEY_FIRST
        return True
    if m == VALUE:
        return _value_start(s, c)
    if m == ARR_FIRST:
        if c == 93:
            s[3] -= 1
            _close(s)
            return True
        return _value_start(s, c)
    if m == KEY_FIRST or m == KEY:
        if c == 34:
            s[0], s[1] = STRING, 1
            return True
        if c == 125 and m == KEY_FIRST:
            s[3] -= 1
            _close(s)
            return True
        return False
    if m == COLON:
        if c == 58:
            s[0] = VALUE
            return True
        return False
    if m == AFTER:
        top = s[4 + s[3] - 1]
        if c == 44:
            s[0] = KEY if top == OBJ else VALUE
            return True
        if (c == 125 and top == OBJ) or (c == 93 and top == ARR):
            s[3] -= 1
            _close(s)
            return True
        return False
    return False  # DONE: nothing may follow


@nb.njit(cache=True)
def token_mask(state, tok_bytes, tok_off, plain, out):
    """out[t] = 1 if token t's bytes keep the text a JSON prefix from ``state`` (a token with no bytes:
    0).  tok_bytes: every token's bytes, concatenated; tok_off: [n_vocab + 1] offsets; plain[t]: 1 if
    token t is string content only (no quote, backslash or control byte: valid wherever a string is
    open, without running it).  The bytes that may come first are found once (256 runs), so most
    tokens are settled by their first byte."""
    s = np.empty_like(state)
    depth = state[3]
    first = np.zeros(256, np.uint8)
    for c in range(256):
        s[: 4 + depth] = state[: 4 + depth]
        first[c] = 1 if step(s, c) else 0
    in_string = state[0] == STRING
    for t in range(out.size):
        a, b = tok_off[t], tok_off[t + 1]
        if a == b or first[tok_bytes[a]] == 0:
            out[t] = 0
            continue
        if b - a == 1 or (in_string and plain[t]):
            out[t] = 1
            continue
        s[: 4 + depth] = state[: 4 + depth]
        ok = 1
        for i in range(a, b):
            if not step(s, tok_bytes[i]):
                ok = 0
                break
        out[t] = ok


@nb.njit(cache=True)
def advance(state, tok_bytes, tok_off, t):
    """Run token t on ``state`` itself; False if it was not allowed."""
    for i in range(tok_off[t], tok_off[t + 1]):
        if not step(state, tok_bytes[i]):
            return False
    return True
