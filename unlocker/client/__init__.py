"""For applications: read the keyring unlocker delivered and encrypt fields with it (fields.py), and the
credential formats the broker writes (formats.py). Imports only the base: an app pulls in nothing else.

    from unlocker.client import Keyring, field_aad
"""

from unlocker.client.fields import AAD_LABEL, NONCE_BYTES, PREFIX, Keyring, KeyringError, field_aad

__all__ = ["AAD_LABEL", "NONCE_BYTES", "PREFIX", "Keyring", "KeyringError", "field_aad"]
