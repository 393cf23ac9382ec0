"""Choices for receipts and collection."""

from django.db import models

from shared.usage import ENDED_BY


class EndedBy(models.TextChoices):
    """How a session ended (the usage record's ``ended_by``)."""

    TEARDOWN = "teardown", "Torn down by the client"
    EXPIRY = "expiry", "Expired (idle past its ttl)"
    ONE_SHOT = "one_shot", "One-shot call"
    SHUTDOWN = "shutdown", "Ended by the node (shutdown or unpinned model)"


assert tuple(EndedBy.values) == ENDED_BY, "EndedBy must follow shared.usage.ENDED_BY"
