"""Where things live, and the few settings an administrator can change in /etc/unlocker/unlocker.conf.

The file is optional, INI-style:

    [tpm2]
    device = device:/dev/tpmrm0
    pcrs = 7

    [prompt]
    tries = 3
    accept-cached = yes      # try the passphrase the initrd cached (initramfs/README.md), once
    keyname = cryptsetup     # the kernel keyring key it is cached under (the default)
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from unlocker.errors import InvalidInput

CONFIG_DIR = Path("/etc/unlocker")
CONFIG_FILE = CONFIG_DIR / "unlocker.conf"
KEYSTORE = Path("/var/lib/unlocker/keystore")
RUN_DIR = Path("/run/unlocker")
DEFAULT_TCTI = "device:/dev/tpmrm0"
# The Debian package runs its own virtualenv here (debian/rules) and ships the unit, the initramfs-tools
# hook and the keyscript itself; from a checkout `unlocker install [--initramfs]` puts them in place.
PACKAGE_VENV = Path("/usr/lib/unlocker/venv")
PACKAGED = Path(sys.prefix) == PACKAGE_VENV
INITRAMFS_HOOK = Path("/usr/share/initramfs-tools/hooks" if PACKAGED else "/etc/initramfs-tools/hooks") / "unlocker"
KEYSCRIPT = Path("/usr/lib/unlocker" if PACKAGED else "/usr/local/lib/unlocker") / "initramfs-keyscript"


@dataclass(frozen=True)
class Config:
    tpm2_device: str | None = None  # None: /dev/tpmrm0 when it exists
    tpm2_pcrs: tuple[int, ...] = (7,)
    tries: int = 3  # passphrase attempts at boot
    keyname: str | None = None  # the kernel keyring key the initrd caches the LUKS passphrase under
    accept_cached: bool = False  # try that cached passphrase once before prompting

    @property
    def cached_keyname(self) -> str | None:
        """The key to read the initrd's cached passphrase from, or None to always prompt."""
        return (self.keyname or "cryptsetup") if self.accept_cached else None


def parse_pcr_list(text: str) -> tuple[int, ...]:
    """'7', '0,7' or '0+7' -> (0, 7); 'none' -> () (a TPM slot bound to no PCR: callers warn).

    Strict: an empty list, an empty item (',' or '7,,0') or a repeated PCR is refused, so that a typo
    never seals to fewer PCRs than the administrator meant."""
    if text.strip() == "none":
        return ()
    items = [p.strip() for p in text.replace("+", ",").split(",")]
    if not all(p.isascii() and p.isdigit() and len(p) <= 2 for p in items):
        raise InvalidInput(f"a PCR list is numbers like 7 or 0,7 (or 'none' for no PCR at all), not {text!r}")
    pcrs = tuple(int(p) for p in items)
    if any(p > 23 for p in pcrs):
        raise InvalidInput("PCR numbers go from 0 to 23")
    if len(set(pcrs)) != len(pcrs):
        raise InvalidInput(f"PCR list {text!r} names a PCR twice")
    return tuple(sorted(pcrs))


MAX_TRIES = 10


def load(path: Path = CONFIG_FILE) -> Config:
    """The config file at path (the defaults when there is none). Raises InvalidInput naming the file."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return Config()  # what loads(b"") returns, without loading configparser (a few ms of every start)
    except OSError as e:
        raise InvalidInput(f"cannot read {path}: {e.strerror}") from None
    return loads(data, str(path))


def loads(data: bytes, source: str = "the config file") -> Config:
    """Parse the config file's bytes. Raises InvalidInput (naming `source`) and nothing else."""
    import configparser

    # No interpolation: a '%' in a value (a TCTI, a key name) is just a character.
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(data.decode("utf-8"), source)
    except UnicodeDecodeError:
        raise InvalidInput(f"{source}: not UTF-8 text") from None
    except configparser.Error as e:
        raise InvalidInput(f"{source}: {e}") from None
    try:
        pcrs = parser.get("tpm2", "pcrs", fallback=None)
        tries = parser.getint("prompt", "tries", fallback=3)
        if not 1 <= tries <= MAX_TRIES:
            raise ValueError(f"tries must be 1..{MAX_TRIES}, not {tries}")
        return Config(
            tpm2_device=parser.get("tpm2", "device", fallback=None),
            tpm2_pcrs=parse_pcr_list(pcrs) if pcrs is not None else (7,),
            tries=tries,
            keyname=parser.get("prompt", "keyname", fallback=None),
            accept_cached=parser.getboolean("prompt", "accept-cached", fallback=False),
        )
    except InvalidInput as e:
        raise InvalidInput(f"{source}: {e}") from None
    except (ValueError, configparser.Error) as e:
        raise InvalidInput(f"{source}: {e}") from None
