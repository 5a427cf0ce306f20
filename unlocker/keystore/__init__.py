"""The keystore core: file format, KDF, AEAD, slot types, unlocking, edits and crash-safe file I/O. Knows
nothing of systemd: may import tpm (for TPM slots) and the base, never the service, the CLI or the client."""
