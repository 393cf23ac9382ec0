"""Speculative decoding by prompt lookup: drafts from a session's own tokens.

A session that quotes its context (an answer citing its sources, code edited in place,
a form filled from a document) writes long runs of tokens it has already seen. The
draft for its next step is what followed the most recent earlier occurrence of its last
few tokens (an n-gram, longest first), looked up in that session's own history: its
prompt, its earlier turns and what it has written so far. Nothing else is indexed; a
:class:`PromptLookup` belongs to one generation of one session and goes with it.

The scheduler decodes the draft in the session's own KV cells, in the same
``llama_decode`` as every other session's tokens, with logits on every draft position,
and keeps the longest prefix its sampler agrees with (see ``LlamaEngine._verify``): the
output is token for token what it would have been without a draft. A draft costs compute
even when it is wrong, so :class:`PromptLookup` also decides how long a draft may be:
it grows while drafts are taken whole, shrinks to what was taken when one is cut short,
and after drafts that were refused at their first token it waits a few steps (longer
each time) before drafting again, so a session with nothing to copy pays little.

Drafts hold client content: they live in RAM with the session's tokens and are never
logged (counts only).
"""

from __future__ import annotations

from collections.abc import Sequence

NGRAM_MAX = 3  # longest n-gram looked up first
NGRAM_MIN = 2  # a single token predicts too little to be worth a draft
FIRST_DRAFT = 4  # draft length before any draft was verified
COOLDOWN_MAX = 16  # steps without drafts, at most, after a run of refused drafts


class PromptLookup:
    """The n-gram index of one generation's history, and its draft-length policy.

    ``sync`` appends what the session's token list holds past what was indexed (the
    list only grows while the generation runs; a shorter list, as while a paused
    generation replays its tokens, is not indexed until it has caught up). ``draft``
    proposes up to ``limit`` tokens; ``verified`` tells it how many were taken.
    """

    def __init__(self, max_draft: int) -> None:
        self.max_draft = max(1, max_draft)
        self.tokens: list[int] = []
        # n-gram -> the index just past its most recent occurrence that has a token
        # after it (the continuation starts there).
        self._after: dict[tuple[int, ...], int] = {}
        self._length = min(FIRST_DRAFT, self.max_draft)
        self._cooldown = 0
        self._refused = 0  # drafts in a row refused at their first token

    def sync(self, history: Sequence[int]) -> None:
        tokens, after = self.tokens, self._after
        for j in range(len(tokens), len(history)):
            # Token j is the continuation of the n-grams that end just before it.
            for n in range(1, NGRAM_MAX + 1):
                if j - n < 0:
                    break
                after[tuple(tokens[j - n : j])] = j
            tokens.append(history[j])

    def draft(self, limit: int) -> list[int]:
        """Up to ``limit`` tokens that followed the latest earlier occurrence of the
        history's last n tokens (n from NGRAM_MAX down to NGRAM_MIN); [] when there is
        none, or while drafting cools down."""
        if self._cooldown > 0:
            self._cooldown -= 1
            return []
        limit = min(limit, self._length)
        tokens = self.tokens
        if limit <= 0:
            return []
        for n in range(NGRAM_MAX, NGRAM_MIN - 1, -1):
            if len(tokens) <= n:
                continue
            start = self._after.get(tuple(tokens[-n:]))
            if start is not None:
                return tokens[start : start + limit]
        return []

    def verified(self, drafted: int, taken: int) -> None:
        """``taken`` of the ``drafted`` tokens matched what the session's sampler chose."""
        if drafted <= 0:
            return
        if taken == drafted:
            self._length = min(self.max_draft, self._length * 2)
            self._refused = 0
        elif taken == 0:
            self._refused += 1
            self._length = max(1, self._length // 2)
            self._cooldown = min(COOLDOWN_MAX, 1 << (self._refused - 1))
        else:
            self._length = max(1, taken + 1)
            self._refused = 0
