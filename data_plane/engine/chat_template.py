"""Chat prompts from the model's own Jinja template, without control-token injection.

The template's own markup (``<|im_start|>`` and the like) is tokenized with special
tokens parsed; what the caller wrote is tokenized as plain text, so a message that
contains ``<|im_end|>`` stays text and can't close its turn early. To tell the two apart
the template is rendered with a unique marker in place of each message's content, and
the output is split at the markers.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Callable, Sequence

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

logger = logging.getLogger(__name__)

# ChatML, the format SmolLM2 and many others use, for models whose GGUF has no template.
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


_MARKER = re.compile("\x00[0-9a-f]{16}\x00")


class ChatTemplateError(ValueError):
    """The template failed to render these messages (roles out of order, say)."""


class _TemplateRaised(Exception):
    """``raise_exception`` called by the template itself."""


def _raise(message: str) -> None:
    raise _TemplateRaised(message)


class ChatTemplate:
    """Renders a chat to tokens with the model's template."""

    def __init__(self, source: str, *, bos_token: str, eos_token: str) -> None:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise
        self._template = env.from_string(source)
        self._bos = bos_token
        self._eos = eos_token

    def render(self, messages: Sequence[dict[str, str]]) -> str:
        try:
            return self._template.render(
                messages=list(messages),
                add_generation_prompt=True,
                bos_token=self._bos,
                eos_token=self._eos,
            )
        except _TemplateRaised as exc:
            # The template's own reason ("roles must alternate") helps the caller, unless
            # the template built it from the messages: then it is content, and withheld.
            reason = str(exc)
            if any(m.get("content") and m["content"] in reason for m in messages):
                reason = "the model's chat template refused these messages"
            raise ChatTemplateError(reason) from None
        except TemplateError as exc:
            # Jinja's message may quote the template's data (content): keep only its kind.
            raise ChatTemplateError(f"chat template failed ({type(exc).__name__})") from None

    def tokens(
        self,
        messages: Sequence[dict[str, str]],
        tokenize: Callable[[str, bool], list[int]],
    ) -> list[int]:
        """Tokens of the chat: ``tokenize(text, special)`` is the model's tokenizer."""
        markers = [f"\x00{secrets.token_hex(8)}\x00" for _ in messages]
        masked = [{**m, "content": marker} for m, marker in zip(messages, markers, strict=True)]
        rendered = self.render(masked)
        # One pass over the output, so a long chat costs time in proportion to its length.
        found = list(_MARKER.finditer(rendered))
        if [f.group() for f in found] != markers:
            # The template transforms, repeats or drops content (rare); fall back to
            # rendering it whole, with content still tokenized as text where we can't
            # tell it apart.
            logger.warning("chat template rewrites message content; markup parsed whole")
            return tokenize(self.render(messages), True)
        out: list[int] = []
        at = 0
        for message, marker in zip(messages, found, strict=True):
            head = rendered[at : marker.start()]
            if head:
                out += tokenize(head, True)
            if message["content"]:
                out += tokenize(message["content"], False)
            at = marker.end()
        if at < len(rendered):
            out += tokenize(rendered[at:], True)
        return out
