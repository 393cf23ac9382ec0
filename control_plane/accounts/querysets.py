"""No querysets: operators are ``django.contrib.auth`` users."""
