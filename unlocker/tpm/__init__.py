"""TPM backends: esapi.py (tpm2-pytss: seal, unseal, PCRs, lockout state) and systemd_creds.py (the
systemd-creds tool). May import only the base."""
