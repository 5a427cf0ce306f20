"""The boot service (`unlocker serve`): ask for the passphrase, hold the keys in secret memory, and deliver
them to granted units after a peer check. May import keystore, tpm, client and the base; never the CLI."""
