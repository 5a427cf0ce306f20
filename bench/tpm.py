"""TPM benchmarks on swtpm, in one run: seal and unseal of a share, and a whole tpm2+passphrase unlock split
into Argon2id, TPM and the rest, beside `systemd-creds decrypt` of a TPM-bound credential on the same swtpm.

    .venv/bin/python bench/tpm.py [--runs N] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from swtpm_fixture import Swtpm  # noqa: E402

from unlocker.keystore import changes, kdf  # noqa: E402
from unlocker.keystore.fileformat import b64decode, parse_argon2, parse_pcrs  # noqa: E402
from unlocker.keystore.slots import EnrollOptions, Secrets  # noqa: E402
from unlocker.keystore.unlock import open_keystore  # noqa: E402
from unlocker.tpm import esapi  # noqa: E402

RUNS = 15
PASS = b"bench passphrase"


def median_ms(fn, runs: int) -> float:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=RUNS)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as d:
        swtpm = Swtpm(Path(d) / "state")
        swtpm.start()
        try:
            r = run(swtpm, Path(d), args.runs)
        finally:
            swtpm.kill()
    if args.json:
        print(json.dumps(r, indent=2))
        return
    runs = r["runs"]
    print(f"swtpm on loopback, median of {runs}")
    print(f"{'operation':<58} {'ms':>8}")
    print(f"{'esapi.seal (primary + policy + create, all flushed)':<58} {r['seal_ms']:>8.1f}")
    print(f"{'esapi.unseal (primary + load + policy session + unseal)':<58} {r['unseal_ms']:>8.1f}")
    print()
    print(f"tpm2+passphrase unlock, Argon2id m={r['memory_kib']} KiB t={r['iterations']}")
    print(f"{'  Argon2id (64 bytes: K1 || K2)':<58} {r['kdf_ms']:>8.1f}")
    print(f"{'  TPM unseal with K2':<58} {r['tpm_ms']:>8.1f}")
    print(f"{'  the rest (HKDF, AES-GCM unwrap, header MAC)':<58} {r['rest_ms']:>8.1f}")
    print(f"{'  whole unlock':<58} {r['unlock_ms']:>8.1f}")
    print()
    print(f"{'baseline: systemd-creds decrypt, --with-key=tpm2 (a process)':<58} {r['systemd_creds_ms']:>8.1f}")
    print(f"{'unseal vs systemd-creds decrypt (ratio)':<58} {r['unseal_vs_systemd_creds']:>8.2f}")
    if r["systemd_creds_back_to_back_failures"]:
        print(f"  ({r['systemd_creds_back_to_back_failures']} of {runs} back-to-back systemd-creds runs failed on "
              f"raw swtpm: {r['systemd_creds_failure']};")
        print(f"   unlocker's unseal ran {runs * 3} times back to back on the same swtpm without one failure)")


def run(swtpm: Swtpm, work: Path, runs: int) -> dict[str, object]:
    tcti = swtpm.tcti
    share = os.urandom(32)
    auth = os.urandom(32)
    sealed = esapi.seal(tcti, share, auth, (7,))
    out = bytearray(32)
    seal_ms = median_ms(lambda: esapi.seal(tcti, share, auth, (7,)), runs)
    unseal_ms = median_ms(lambda: esapi.unseal(tcti, sealed, auth, out), runs)

    options = EnrollOptions(argon2=kdf.Argon2Params(64 * 1024, 3))
    opened = changes.create("tpm2+passphrase", Secrets(bytearray(PASS), tcti), options)
    keystore = opened.keystore
    slot = keystore.slot(0)
    params, salt = parse_argon2(slot.param("argon2id")), b64decode(slot.param("salt"))
    slot_sealed = esapi.Sealed(b64decode(slot.param("public")), b64decode(slot.param("private")),
                             parse_pcrs(slot.param("pcrs")), "sha256", True)
    stretched = kdf.argon2id(PASS, salt, params, 64)
    kdf_ms = median_ms(lambda: kdf.argon2id(PASS, salt, params, 64), runs)
    tpm_ms = median_ms(lambda: esapi.unseal(tcti, slot_sealed, stretched[32:], out), runs)
    total_ms = median_ms(lambda: open_keystore(keystore, Secrets(bytearray(PASS), tcti)).close(), runs)

    creds = [f"--tpm2-device=swtpm:port={swtpm.port}"]
    cred_file = work / "share.cred"
    subprocess.run(["systemd-creds", "encrypt", "--with-key=tpm2", *creds, "--name=share", "-", str(cred_file)],
                   input=share, check=True, capture_output=True)
    def creds_decrypt() -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(["systemd-creds", "decrypt", *creds, "--name=share", str(cred_file), "-"],
                              capture_output=True)

    # On a raw swtpm (no resource manager) systemd-creds leaves sessions loaded: count how many runs in a
    # row fail, then time it fairly with a freshly restarted swtpm before each run (outside the timing).
    failures = [p for p in (creds_decrypt() for _ in range(runs)) if p.returncode != 0 or p.stdout != share]
    samples = []
    for _ in range(runs):
        swtpm.restart(orderly=True)  # a clean TPM2_Shutdown: an unclean one counts as a failed try
        start = time.perf_counter()
        p = creds_decrypt()
        samples.append(time.perf_counter() - start)
        assert p.returncode == 0 and p.stdout == share, p.stderr
    creds_ms = statistics.median(samples) * 1000
    return {"runs": runs, "seal_ms": round(seal_ms, 2), "unseal_ms": round(unseal_ms, 2),
            "memory_kib": params.memory_kib, "iterations": params.iterations, "kdf_ms": round(kdf_ms, 2),
            "tpm_ms": round(tpm_ms, 2), "rest_ms": round(max(total_ms - kdf_ms - tpm_ms, 0), 2),
            "unlock_ms": round(total_ms, 2), "systemd_creds_ms": round(creds_ms, 2),
            "unseal_vs_systemd_creds": round(unseal_ms / creds_ms, 3),
            "systemd_creds_back_to_back_failures": len(failures),
            "systemd_creds_failure": failures[0].stderr.decode().strip().splitlines()[-1] if failures else None}


if __name__ == "__main__":
    main()
