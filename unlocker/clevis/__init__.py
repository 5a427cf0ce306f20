"""clevis JWEs, spoken natively: the tang pin (McCallum-Relyea over HTTP to Tang servers) and the sss pin
(Shamir over a prime field between child pins), byte-compatible with Debian 12's clevis 19.

A network backend beside `unlocker.tpm`: the keystore's `clevis` slot calls it; it knows nothing of the
keystore.
"""
