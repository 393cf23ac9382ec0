"""A llama.cpp grammar as the first sampler of a session's own chain.

The constraint of a generation (:class:`~data_plane.engine.base.Constraint`) lives in
that generation's sampler chain and nowhere else: the batch, the KV cells and the other
sessions' chains never see it, so constrained and unconstrained sessions decode side by
side exactly as before. The filter comes first in the chain: it sets the logit of every
token the grammar does not allow to -inf, and only then do temperature, top_p and the
draw (or the greedy choice) run. Each token the chain picks is accepted into the
grammar (``llama_sampler_sample`` accepts into every sampler of the chain), so the
grammar always knows what has been written.

llama.cpp's grammar sampler checks every candidate it is given: over the whole
vocabulary (49k tokens for SmolLM2) that costs about as much as decoding the token. At
greedy decoding the filter first checks only the ``TOP`` candidates with the highest
logits: if any of them is allowed, the best allowed token of the whole vocabulary is
among them (any other allowed token has a lower logit), so the choice is exactly the
one the full check would make; only when none is allowed does it check everything.
When a token is drawn (temperature > 0) every candidate keeps its chance, so the
filter checks all of them.
"""

from __future__ import annotations

import ctypes
from collections import deque
from typing import Any

import llama_cpp as llama
import numpy as np

TOP = 1024  # candidates checked first at greedy decoding

_NAME = b"sanctum-grammar"
# Filters whose sampler llama.cpp has freed. Kept a while rather than dropped inside
# their own ``free`` callback (which is running when it lets go of them).
_released: deque[GrammarFilter] = deque(maxlen=256)
_live: dict[int, GrammarFilter] = {}  # alive while llama.cpp holds their sampler


class GrammarFilter:
    """A llama.cpp sampler (implemented here) that applies ``grammar`` (a llama.cpp
    grammar sampler it owns) to the candidates, as described in the module docstring."""

    def __init__(self, grammar: Any, *, greedy: bool) -> None:
        self._grammar = grammar
        self._greedy = greedy
        iface = llama.llama_sampler_i()
        # The callbacks and the interface must outlive the sampler: held here, and this
        # object is held in ``_live`` until llama.cpp frees the sampler.
        self._callbacks = (
            llama.llama_sampler_i_name(self._name),
            llama.llama_sampler_i_accept(self._accept),
            llama.llama_sampler_i_apply(self._apply),
            llama.llama_sampler_i_reset(self._reset),
            llama.llama_sampler_i_free(self._free),
        )
        iface.name, iface.accept, iface.apply, iface.reset, iface.free = self._callbacks
        self._iface = iface
        self.sampler = llama.llama_sampler_init(ctypes.pointer(iface), None)
        _live[id(self)] = self

    def _name(self, _smpl: Any) -> bytes:
        return _NAME

    def _accept(self, _smpl: Any, token: int) -> None:
        llama.llama_sampler_accept(self._grammar, token)

    def _reset(self, _smpl: Any) -> None:
        llama.llama_sampler_reset(self._grammar)

    def _free(self, _smpl: Any) -> None:
        if self._grammar is not None:
            llama.llama_sampler_free(self._grammar)
            self._grammar = None
        _released.append(self)
        _live.pop(id(self), None)

    def _apply(self, _smpl: Any, cur_p: Any) -> None:
        cands = cur_p.contents
        n = int(cands.size)
        if self._greedy and n > TOP and self._top_allowed(cands, n):
            return
        llama.llama_sampler_apply(self._grammar, cur_p)

    def _top_allowed(self, cands: Any, n: int) -> bool:
        """Check the ``TOP`` best candidates; if the grammar allows any, leave only those
        allowed in ``cands`` (the rest at -inf) and return True."""
        data = np.ctypeslib.as_array(cands.data, shape=(n,))
        logits = data["logit"]
        top = np.argpartition(logits, n - TOP)[n - TOP :]
        sub = np.ascontiguousarray(data[top])
        view = llama.llama_token_data_array(
            data=sub.ctypes.data_as(llama.llama_token_data_p),
            size=TOP,
            selected=-1,
            sorted=False,
        )
        llama.llama_sampler_apply(self._grammar, ctypes.byref(view))
        allowed = np.isfinite(sub["logit"])
        if not allowed.any():
            return False
        kept = logits[top[allowed]].copy()
        logits[:] = -np.inf
        logits[top[allowed]] = kept
        return True
