"""What every signed release for a node or a gateway carries besides its content.

- ``version``: only ever goes up; a target keeps the highest it applied (its floor) on
  disk and refuses anything at or below it, across restarts.
- ``issued_at`` and ``expires_at``: a target holding only an expired release stops
  serving (fail closed) until the control plane re-issues one, which it does well
  before the expiry.
- ``trust``: the control-plane keys the target trusts from now on, for config and for
  management requests (``shared.trust``): how a rotated key reaches every target
  signed by a key it already trusts.
- ``tls``: the target's management certificate (renewed before it expires, for the key
  it made at enrolment) and the CA it accepts the control plane's client certificate
  from; a gateway's also holds its ingress certificate (``shared.pki``). ``None`` for a
  target that has not enrolled: its listener stays as it is.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, model_validator

from shared.pki import TlsMaterial
from shared.trust import TARGET_PURPOSES, KeySet

# What names a target, a client, a model: it travels in every signed document.
Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")]

# Versions stay far from any integer limit (JSON's 2**53, a database's bigint): a target
# can't be pushed, or claim, a version the control plane could never issue above.
MAX_VERSION = 2**50


class Release(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int = Field(ge=1, le=MAX_VERSION)
    issued_at: AwareDatetime
    expires_at: AwareDatetime
    trust: KeySet
    tls: TlsMaterial | None = None

    @model_validator(mode="after")
    def _release_rules(self) -> Release:
        if self.expires_at <= self.issued_at:
            raise ValueError("expires_at must be after issued_at")
        for purpose in TARGET_PURPOSES:
            if not self.trust.kids(purpose):
                raise ValueError(f"trust must name at least one {purpose} key")
        if set(self.trust.kids("log")):
            raise ValueError("trust names config and management keys only")
        return self

    @property
    def target(self) -> str:
        """The node or gateway this release is for."""
        raise NotImplementedError

    def expired(self, now: datetime) -> bool:
        return now >= self.expires_at
