"""``python -m control_plane signing_key``: where the public half of the signing key is.

Prints ``SANCTUM_CP_PUBLIC_KEY=PATH`` and ``SANCTUM_CP_KEY_ID=KID``; give the PEM to each
node as ``SANCTUM_DP_CONTROL_PLANE_PUBLIC_KEY``.
"""

from typing import Any

from django.core.management.base import BaseCommand

from control_plane.core.signing import public_key_path, signing_key
from shared.keys import key_id


class Command(BaseCommand):
    help = "Print the path and key id of the control plane's public signing key."

    def handle(self, *args: Any, **options: Any) -> None:
        self.stdout.write(f"SANCTUM_CP_PUBLIC_KEY={public_key_path().resolve()}")
        self.stdout.write(f"SANCTUM_CP_KEY_ID={key_id(signing_key().public_key())}")
