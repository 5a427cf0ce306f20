"""unlocker: keep a data key encrypted at rest and hand it, at boot, only to the systemd units you grant.

Layers, top to bottom (docs/ARCHITECTURE.md; `lint-imports` enforces them):
  cli/       the `unlocker` command: one module per command family
  service/   the boot service: prompt, broker, peer check, grants, control socket, audit
  keystore/  the keystore core: format, KDF, AEAD, slots, unlock, edits, crash-safe file I/O
  tpm/       TPM backends: tpm2-pytss ESAPI, systemd-creds
  client/    what applications import: credential formats and field encryption (nothing else)
Shared base, importable by all: errors, memory, config, run (the subprocess wrapper), secret_input.
"""
