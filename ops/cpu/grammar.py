"""The grammar matcher (Numba): which tokens may come next so that the text stays a prefix of a
GBNF grammar's language (``runtime/gbnf.py`` compiles the grammar to the tables ``g``).

A parse position is a *stack* of element positions, as llama.cpp's matcher keeps: the top is the
character set the next character must match, each entry below it where its rule goes on after the
rule above returns.  Stacks are linked nodes ``(pos, up)``, hash-consed (one node per pair), so two
equal stacks are the same node id: a parse state is then a sorted set of node ids (``-1``: the text
may end here) plus a partial UTF-8 character (its bits so far, bytes still to come).  States are
interned too, and a state's transition on a byte is computed once and kept in ``trans``: the
matcher is a DFA over bytes built lazily, the grammar-sized work done the first time a state meets
a byte and never again.  A rule call that ends its alternative pushes no continuation (a tail
call), so ``x*``, which is ``r ::= x r |``, keeps stacks (and the number of states) bounded.

:func:`token_mask` walks the vocabulary sorted by bytes, so tokens that share a prefix share its
walk (the depth-k state is kept while the next token has the same first k bytes), and a prefix
found dead skips every token that starts with it.

The tables ``t`` grow: a function that runs out of room returns :data:`FULL`, the caller enlarges
them (:func:`rehash_nodes`, :func:`rehash_states`) and calls again; the work done stays valid.
"""

from __future__ import annotations

import numba as nb
import numpy as np

END, CHARS, REF = 0, 1, 2  # element kinds (runtime/gbnf.py)
ACCEPT = -1  #: the stack set member "the grammar's text may end here"
UNKNOWN, DEAD, FULL, AMBIGUOUS = -1, -2, -3, -4  #: trans entries and return codes
MAX_EXPAND = 1 << 16  #: expansion steps for one character before the grammar counts as too ambiguous

# t = (node [cap_n, 2] int32 (pos, up), node_hash [2^k] int32, sdat [cap_d] int32 (states' node ids),
#      state [cap_s, 4] int32 (sdat start, count, utf-8 bits, utf-8 bytes to come + 8 * the character's bytes), state_hash [2^k] int32,
#      trans [cap_s, 256] int32, meta [4] int64 (nodes, states, sdat used))
# g = (ekind [n_elem] int8, earg [n_elem] int32, alt_off [n_rules+1] int32, alts [n_alts] int32,
#      set_off [n_sets+1] int32, set_neg [n_sets] uint8, rlo [n_ranges] int32, rhi [n_ranges] int32)


@nb.njit(inline="always", cache=True)
def _mix(h, v):
    return ((h ^ (v + 0x9E3779B9)) * 0x100000001B3) & 0x7FFFFFFFFFFFFFFF


@nb.njit(cache=True)
def _node(t, pos, up):
    """The node id of stack (pos, up), made if new; FULL if the table is."""
    node, nh, meta = t[0], t[1], t[6]
    mask = nh.size - 1
    h = _mix(_mix(17, pos), up) & mask
    while nh[h] != -1:
        i = nh[h]
        if node[i, 0] == pos and node[i, 1] == up:
            return i
        h = (h + 1) & mask
    n = meta[0]
    if n >= node.shape[0] or 2 * n >= nh.size:
        return FULL
    node[n, 0], node[n, 1] = pos, up
    nh[h] = n
    meta[0] = n + 1
    return n


@nb.njit(cache=True)
def _state_hash(items, n, bits, more):
    h = _mix(_mix(31, bits), more)
    for k in range(n):
        h = _mix(h, items[k])
    return h


@nb.njit(cache=True)
def _state(t, items, n, bits, more):
    """The state id of the sorted node set ``items[:n]`` with a partial character, made if new."""
    sdat, st, sh, meta = t[2], t[3], t[4], t[6]
    mask = sh.size - 1
    h = _state_hash(items, n, bits, more) & mask
    while sh[h] != -1:
        i = sh[h]
        if st[i, 1] == n and st[i, 2] == bits and st[i, 3] == more:
            a = st[i, 0]
            same = True
            for k in range(n):
                if sdat[a + k] != items[k]:
                    same = False
                    break
            if same:
                return i
        h = (h + 1) & mask
    s, used = meta[1], meta[2]
    if s >= st.shape[0] or 2 * s >= sh.size or used + n > sdat.size:
        return FULL
    for k in range(n):
        sdat[used + k] = items[k]
    st[s, 0], st[s, 1], st[s, 2], st[s, 3] = used, n, bits, more
    sh[h] = s
    meta[1], meta[2] = s + 1, used + n
    return s


@nb.njit(cache=True)
def _expand(g, t, pos0, up0, out, n_out, work):
    """Append to ``out`` the stacks that stack (pos0, up0) stands for with a character set on top,
    or ACCEPT where the whole text may end; the new count, or FULL / AMBIGUOUS."""
    ekind, earg, alt_off, alts = g[0], g[1], g[2], g[3]
    node = t[0]
    work[0, 0], work[0, 1] = pos0, up0
    nw, steps = 1, 0
    while nw > 0:
        nw -= 1
        pos, up = work[nw, 0], work[nw, 1]
        steps += 1
        if steps > MAX_EXPAND:
            return AMBIGUOUS
        k = ekind[pos]
        if k == END:  # the rule returns: its caller goes on (or the text may end)
            if up == -1:
                if n_out >= out.size:
                    return AMBIGUOUS
                out[n_out] = ACCEPT
                n_out += 1
            else:
                work[nw, 0], work[nw, 1] = node[up, 0], node[up, 1]
                nw += 1
        elif k == CHARS:
            i = _node(t, pos, up)
            if i < 0:
                return i
            if n_out >= out.size:
                return AMBIGUOUS
            out[n_out] = i
            n_out += 1
        else:  # a rule call: each alternative, returning to the next element (none: a tail call)
            cont = up
            if ekind[pos + 1] != END:
                cont = _node(t, pos + 1, up)
                if cont < 0:
                    return cont
            r = earg[pos]
            for a in range(alt_off[r + 1] - 1, alt_off[r] - 1, -1):
                if nw >= work.shape[0]:
                    return AMBIGUOUS
                work[nw, 0], work[nw, 1] = alts[a], cont
                nw += 1
    return n_out


@nb.njit(cache=True)
def _in_set(g, s, lo, hi):
    """Whether set s holds some code point in [lo, hi]."""
    set_off, set_neg, rlo, rhi = g[4], g[5], g[6], g[7]
    if set_neg[s]:  # the complement: [lo, hi] must not lie inside one excluded range
        for r in range(set_off[s], set_off[s + 1]):
            if rlo[r] <= lo and hi <= rhi[r]:
                return False
        return True  # (ranges are sorted but may touch: a gap-free cover is a grammar no one writes)
    for r in range(set_off[s], set_off[s + 1]):
        if rlo[r] <= hi and lo <= rhi[r]:
            return True
    return False


@nb.njit(cache=True)
def _sort_unique(a, n):
    a[:n].sort()
    m = 0
    for k in range(n):
        if m == 0 or a[k] != a[m - 1]:
            a[m] = a[k]
            m += 1
    return m


@nb.njit(cache=True)
def _step(g, t, s, byte, out, work):
    """The state after state s reads ``byte``: its id, DEAD, FULL or AMBIGUOUS."""
    node, sdat, st = t[0], t[2], t[3]
    earg = g[1]
    a, n, bits, more = st[s, 0], st[s, 1], st[s, 2], st[s, 3] & 7
    size = st[s, 3] >> 3  # the bytes of the character being read
    if more == 0:
        if byte < 0x80:
            bits, size = byte, 1
        elif 0xC2 <= byte <= 0xDF:
            bits, more, size = byte & 0x1F, 1, 2
        elif 0xE0 <= byte <= 0xEF:
            bits, more, size = byte & 0x0F, 2, 3
        elif 0xF0 <= byte <= 0xF4:
            bits, more, size = byte & 0x07, 3, 4
        else:
            return DEAD
    else:
        if byte & 0xC0 != 0x80:
            return DEAD
        bits, more = (bits << 6) | (byte & 0x3F), more - 1
    least = 0 if size == 1 else (0x80 if size == 2 else (0x800 if size == 3 else 0x10000))  # (shorter: overlong)
    if more > 0:  # mid-character: alive while some stack takes a character that starts so
        lo = max(bits << (6 * more), least)
        hi = min((bits << (6 * more)) | ((1 << (6 * more)) - 1), 0x10FFFF)
        if lo > hi:
            return DEAD
        for k in range(n):
            i = sdat[a + k]
            if i != ACCEPT and _in_set(g, earg[node[i, 0]], lo, hi):
                for j in range(n):
                    out[j] = sdat[a + j]
                return _state(t, out, n, bits, more + 8 * size)
        return DEAD
    if bits < least or 0xD800 <= bits <= 0xDFFF or bits > 0x10FFFF:  # overlong, a surrogate, past Unicode
        return DEAD
    m = 0
    for k in range(n):
        i = sdat[a + k]
        if i != ACCEPT and _in_set(g, earg[node[i, 0]], bits, bits):
            m = _expand(g, t, node[i, 0] + 1, node[i, 1], out, m, work)
            if m < 0:
                return m
    if m == 0:
        return DEAD
    m = _sort_unique(out, m)
    return _state(t, out, m, 0, 0)


@nb.njit(cache=True)
def next_state(g, t, s, byte, out, work):
    """:func:`_step`, through the transition cache."""
    v = t[5][s, byte]
    if v == UNKNOWN:
        v = _step(g, t, s, byte, out, work)
        if v >= 0 or v == DEAD:
            t[5][s, byte] = v
    return v


@nb.njit(cache=True)
def start_state(g, t, root, out, work):
    """The state before any text: rule ``root``'s alternatives expanded."""
    alt_off, alts = g[2], g[3]
    m = 0
    for r in range(alt_off[root], alt_off[root + 1]):
        m = _expand(g, t, alts[r], -1, out, m, work)
        if m < 0:
            return m
    m = _sort_unique(out, m)
    return _state(t, out, m, 0, 0)


@nb.njit(cache=True)
def advance(g, t, s, data, out, work):
    """The state after ``data`` (uint8) from state s, or DEAD / FULL / AMBIGUOUS."""
    for k in range(data.size):
        s = next_state(g, t, s, data[k], out, work)
        if s < 0:
            return s
    return s


@nb.njit(cache=True)
def can_end(t, s):
    """Whether the text may end in state s (an end-of-generation token is allowed)."""
    a, n = t[3][s, 0], t[3][s, 1]
    return t[3][s, 3] == 0 and n > 0 and t[2][a] == ACCEPT  # (sorted: ACCEPT, -1, comes first)


@nb.njit(cache=True)
def only_end(t, s):
    """Whether nothing but the end may follow state s."""
    return can_end(t, s) and t[3][s, 1] == 1


@nb.njit(cache=True)
def token_mask(g, t, s0, vdata, voff, vid, lcp, allowed, depth, out, work):
    """``allowed[id] = 1`` for each token whose bytes keep the text in the grammar from state s0.

    vdata/voff [n+1]: the tokens' bytes in sorted order, vid [n] their ids, lcp [n] the bytes each
    shares with the one before; depth [max_len + 1] int32 scratch.  0, or FULL / AMBIGUOUS."""
    allowed[:] = 0
    trans = t[5]
    depth[0] = s0
    valid = 0  # depth[0..valid] hold the states of the previous token's prefixes
    dead_at = 1 << 30  # the previous token's prefix of this length was found dead
    for i in range(vid.size):
        shared = lcp[i]
        if shared >= dead_at:  # starts with a dead prefix
            continue
        a, n = voff[i], voff[i + 1] - voff[i]
        d = min(shared, valid)
        s = depth[d]
        dead_at = 1 << 30
        for k in range(d, n):
            c = vdata[a + k]
            v = trans[s, c]  # (the walk is this lookup: a new transition is made once)
            s = v if v != UNKNOWN else next_state(g, t, s, c, out, work)
            if s < 0:
                if s != DEAD:
                    return s
                dead_at, valid = k + 1, k
                break
            depth[k + 1] = s
        if dead_at == 1 << 30:
            valid = n
            allowed[vid[i]] = 1
    return 0


@nb.njit(cache=True)
def rehash_nodes(node, n, nh):
    """Fill the (empty, -1) hash ``nh`` with nodes ``node[:n]``."""
    mask = nh.size - 1
    for i in range(n):
        h = _mix(_mix(17, node[i, 0]), node[i, 1]) & mask
        while nh[h] != -1:
            h = (h + 1) & mask
        nh[h] = i


@nb.njit(cache=True)
def rehash_states(sdat, st, n, sh):
    """Fill the (empty, -1) hash ``sh`` with states ``st[:n]``."""
    mask = sh.size - 1
    for i in range(n):
        h = _state_hash(sdat[st[i, 0] :], st[i, 1], st[i, 2], st[i, 3]) & mask
        while sh[h] != -1:
            h = (h + 1) & mask
        sh[h] = i


@nb.njit(cache=True)
def shared_prefixes(data, off):
    """lcp [n]: the bytes token i shares with token i-1 (0 for the first), tokens ``data[off[i]:off[i+1]]``."""
    n = off.size - 1
    lcp = np.zeros(n, np.int32)
    for i in range(1, n):
        a, b = off[i - 1], off[i]
        m = min(off[i] - a, off[i + 1] - b)
        k = 0
        while k < m and data[a + k] == data[b + k]:
            k += 1
        lcp[i] = k
    return lcp
