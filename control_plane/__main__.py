"""``python -m control_plane COMMAND``: Django's manage.py, with the settings module set."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "control_plane.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(["python -m control_plane", *sys.argv[1:]])


if __name__ == "__main__":
    main()
