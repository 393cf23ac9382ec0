"""``python -m control_plane tls [init --ca-dir DIR | renew KIND NAME]``: the internal CAs.

``init`` makes the management and ingress CAs in ``--ca-dir`` (kept if they are there)
for production's ``SANCTUM_CP_TLS__CA_DIR``. ``renew node|gateway NAME`` re-issues the
target's certificates now, for the keys it enrolled with; its next release carries them.
Without an action: the CAs in use (made on first use in development), and the control
plane's client certificate, issued if due.
Prints ``SANCTUM_CP_<CA>_CA_FINGERPRINT=HEX`` lines.
"""

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from control_plane.core.tls import client_identity, ingress_ca, init, management_ca
from control_plane.pki.choices import TargetKind
from control_plane.pki.services import renew_now


class Command(BaseCommand):
    help = "Make the internal CAs, or show them and issue the control plane's certificate."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("action", nargs="?", choices=["init", "renew"])
        parser.add_argument("target", nargs="*", help="renew: KIND NAME")
        parser.add_argument("--ca-dir", type=Path)

    def handle(self, *args: Any, **options: Any) -> None:
        if options["action"] == "init":
            if options["ca_dir"] is None:
                self.stderr.write("init needs --ca-dir DIR")
                raise SystemExit(2)
            for which, fp in init(options["ca_dir"]).items():
                self.stdout.write(f"SANCTUM_CP_{which.upper()}_CA_FINGERPRINT={fp}")
            return
        if options["action"] == "renew":
            if len(options["target"]) != 2 or options["target"][0] not in TargetKind.values:
                self.stderr.write("renew needs KIND NAME (KIND: node or gateway)")
                raise SystemExit(2)
            kind, name = options["target"]
            renewed = renew_now(kind, name)
            if not renewed:
                self.stderr.write(f"{kind} {name} has no certificate: it has not enrolled")
                raise SystemExit(1)
            for row in renewed:
                self.stdout.write(f"SANCTUM_CP_RENEWED_{row.purpose.upper()}={row.serial}")
            return
        cert, _ = client_identity()
        self.stdout.write(f"SANCTUM_CP_MANAGEMENT_CA_FINGERPRINT={management_ca().fingerprint}")
        self.stdout.write(f"SANCTUM_CP_INGRESS_CA_FINGERPRINT={ingress_ca().fingerprint}")
        self.stdout.write(f"SANCTUM_CP_CLIENT_CERTIFICATE={cert.resolve()}")
