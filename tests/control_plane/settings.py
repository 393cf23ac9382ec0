"""Django settings for the test run: the real ones, with a throwaway data directory.

Set before ``control_plane.settings`` reads its environment, so keys and the secret
generated in development mode land in a temp dir, not the checkout's ``var/``.
"""

import atexit
import os
import shutil
import tempfile

if "SANCTUM_CP_DATA_DIR" not in os.environ:
    _data_dir = tempfile.mkdtemp(prefix="sanctum-cp-test-")
    os.environ["SANCTUM_CP_DATA_DIR"] = _data_dir
    atexit.register(shutil.rmtree, _data_dir, True)
# Tests decide per test whether there is a broker; the unit tests run tasks in-process.
os.environ.pop("REDIS_URL", None)
os.environ.pop("SANCTUM_CP_REDIS_URL", None)

from control_plane.settings import *  # noqa: F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast, tests only

if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":  # noqa: F405
    # A file, not SQLite's shared-cache memory database: with that, concurrent
    # transactions (the allocation tests' threads) fail at once with "table is locked"
    # instead of waiting for the lock as the real file database does.
    DATABASES["default"]["TEST"] = {  # noqa: F405
        "NAME": os.path.join(os.environ["SANCTUM_CP_DATA_DIR"], "test.sqlite3")
    }
