"""``python -m control_plane create_operator NAME --role admin|auditor``.

Prints ``SANCTUM_OPERATOR_PASSWORD=...`` when it set a password (new user or
``--reset-password``) and, with ``--token``, ``SANCTUM_API_TOKEN=...`` for the REST API
(a new token each time; ``--rotate-tokens`` voids the operator's others).

``--clients acme,bank`` scopes an auditor to those clients only (it then sees and
downloads only theirs); ``--all-clients`` lifts the scope; neither keeps the one it has.
"""

from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from control_plane.accounts.choices import Role
from control_plane.accounts.models import AuditorScope
from control_plane.accounts.services import create_operator, issue_api_token


class Command(BaseCommand):
    help = "Create or update an operator in the admin or auditor role."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--role", choices=Role.values, required=True)
        parser.add_argument("--email", default="")
        parser.add_argument("--reset-password", action="store_true")
        parser.add_argument(
            "--token",
            action="store_true",
            help="also print a new API token (shown once; it expires after "
            "SANCTUM_CP_AUTH__TOKEN_TTL_SECONDS)",
        )
        parser.add_argument(
            "--rotate-tokens", action="store_true", help="with --token: void the others"
        )
        scope = parser.add_mutually_exclusive_group()
        scope.add_argument(
            "--clients",
            metavar="ID,ID",
            help="auditors only: scope to these client ids (comma-separated); '' for none",
        )
        scope.add_argument(
            "--all-clients", action="store_true", help="auditors only: lift the scope"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        clients = options["clients"]
        if clients is not None:
            clients = [c.strip() for c in clients.split(",") if c.strip()]
        try:
            creds = create_operator(
                options["username"],
                options["role"],
                reset_password=options["reset_password"],
                email=options["email"],
                clients=clients,
                all_clients=options["all_clients"],
            )
        except ValidationError as exc:
            raise CommandError(" ".join(exc.messages)) from None
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"SANCTUM_OPERATOR={creds.user.get_username()}")
        scope = AuditorScope.objects.filter(user=creds.user).first()
        if scope is not None:
            slugs = ",".join(scope.clients.order_by("slug").values_list("slug", flat=True))
            self.stdout.write(f"SANCTUM_OPERATOR_CLIENTS={slugs}")
        if creds.password:
            self.stdout.write(f"SANCTUM_OPERATOR_PASSWORD={creds.password}")
        if options["token"]:
            self.stdout.write(
                f"SANCTUM_API_TOKEN={issue_api_token(creds.user, rotate=options['rotate_tokens'])}"
            )
