"""``python -m control_plane keys``: the published key set, and the keys' kids.

Writes the published key set beside the keyring (public keys only) and prints
``SANCTUM_CP_TRUST_KEYS=PATH`` (give that file to nodes as ``SANCTUM_DP_TRUST_KEYS``, to
gateways as ``SANCTUM_GW_TRUST_KEYS``, to auditors for ``sanctum verify --log-key``) and
``SANCTUM_CP_<PURPOSE>_KEY_ID=KID`` for each purpose's active key. Rotating is
``sanctum keys rotate`` (docs/operations.md).
"""

from typing import Any

from django.core.management.base import BaseCommand

from control_plane.core.signing import keyring, publish
from shared.trust import PURPOSES


class Command(BaseCommand):
    help = "Publish the control plane's public key set and print where it is."

    def handle(self, *args: Any, **options: Any) -> None:
        self.stdout.write(f"SANCTUM_CP_TRUST_KEYS={publish().resolve()}")
        for purpose in PURPOSES:
            kid = keyring().active(purpose).kid
            self.stdout.write(f"SANCTUM_CP_{purpose.upper()}_KEY_ID={kid}")
