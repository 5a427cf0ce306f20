"""For applications: read the keyring unlocker delivered and encrypt fields with it (fields.py), and the
credential formats the broker writes (formats.py). Imports only the base: an app pulls in nothing else.

    from unlocker.client import Keyring, field_aad
"""

__all__ = ["AAD_LABEL", "NONCE_BYTES", "PREFIX", "Keyring", "KeyringError", "field_aad"]

# fields.py (and with it AES from cryptography) loads on first use of one of its names: the broker and the
# CLI import formats.py from this package and need no AES. typing.TYPE_CHECKING without importing typing.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from unlocker.client.fields import AAD_LABEL, NONCE_BYTES, PREFIX, Keyring, KeyringError, field_aad


def __getattr__(name: str) -> object:
    if name in __all__:
        from unlocker.client import fields

        return getattr(fields, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
