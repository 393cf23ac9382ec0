"""The ``sanctum`` command line. Each subcommand lives in its own module."""
