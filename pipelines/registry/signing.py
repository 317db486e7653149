"""Ledger entries signed with Ed25519, so that write access to the registry's storage is not enough
to rewrite its history: each entry's hash (which covers its sequence number and the previous hash) is
signed by the promoting component's private key, and `verify` checks every signature against the
public keys the registry trusts (configured outside the registry, in the model's params in git).

Inputs: a private key (PEM, PKCS8, from a file or an env var: never kept in the registry), the
trusted public keys (base64 of the raw 32 bytes), the ledger's entries.
Outputs: an entry's `signature` ({key, sig}, base64), and the problems of a ledger: an unsigned entry,
one signed by a key nobody trusted, or a signature that does not match, each named by its line.
Key rotation: an entry with action `rotate_key`, signed by a trusted key, names `new_key`; later
entries may be signed by it (and `retire_key` removes the old one from then on).
"""
from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from pipelines.core.errors import ConfigError


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def public_key(key: Ed25519PrivateKey) -> str:
    """The base64 of the raw public key: what `registry.trusted_keys` lists."""
    return _b64(key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


def new_key_pem() -> bytes:
    return Ed25519PrivateKey.generate().private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption())


def load_key(pem: bytes, where: str) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{where}: not a PEM private key ({type(err).__name__})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{where}: the signing key must be Ed25519, not {type(key).__name__}")
    return key


MAKE_KEYS = ("; make a key pair with `pipelines registry keygen --out FILE` (the embedded default's set-up, "
             "`./dev.sh demo`, makes .airflow/registry-keys/)")


def _resolved(path: str, folder: Path | None) -> Path:
    """A params path: relative ones are relative to the model's folder (the params file's), not the cwd."""
    p = Path(path).expanduser()
    return p if p.is_absolute() or folder is None else Path(folder) / p


def load_signer(key_file: Path | None, key_pem: str | None) -> Ed25519PrivateKey | None:
    """The signing key from a file (only its owner may read it), else from the PEM an env var held
    (the caller reads it)."""
    if key_file:
        if not key_file.is_file():
            raise ConfigError(f"registry.signing_key_file: {key_file} not found{MAKE_KEYS}")
        mode = key_file.stat().st_mode & 0o777
        if mode & 0o077:
            raise ConfigError(f"registry.signing_key_file: {key_file} is readable by others (mode {mode:04o}); "
                              f"a private key must be mode 0600 (chmod 600 {key_file})")
        return load_key(key_file.read_bytes(), str(key_file))
    return load_key(key_pem.encode("utf-8"), "the signing key env var") if key_pem else None


def check_public_key(key: str, where: str) -> str:
    """A base64 raw Ed25519 public key (32 bytes), or ConfigError naming where it came from."""
    try:
        Ed25519PublicKey.from_public_bytes(base64.b64decode(key, validate=True))
    except (ValueError, TypeError):
        raise ConfigError(f"{where}: {key[:16]!r} is not a base64 Ed25519 public key (32 bytes)") from None
    return key


def trusted_keys(rp, folder: Path | None = None) -> tuple[str, ...]:
    """`registry.trusted_keys` and the keys of `registry.trusted_keys_file` (one per line, `#` comments);
    a named file must exist."""
    keys = list(rp.trusted_keys)
    if rp.trusted_keys_file:
        path = _resolved(rp.trusted_keys_file, folder)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"registry.trusted_keys_file: {path} cannot be read "
                              f"({getattr(err, 'strerror', None) or type(err).__name__}){MAKE_KEYS}") from None
        lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        if not lines:
            raise ConfigError(f"registry.trusted_keys_file: {path} holds no key")
        keys += [check_public_key(ln, f"registry.trusted_keys_file {path}") for ln in lines]
    return tuple(dict.fromkeys(keys))


def keys_for(rp, writer_env: dict[str, str] | None = None, folder: Path | None = None) -> "Keys":
    """The Keys of a registry client from its `registry` params (relative files: `folder`'s): the
    trusted keys always; the signing key only for a writer (given the environment to find it in, read
    by the caller)."""
    key_file = _resolved(rp.signing_key_file, folder) if rp.signing_key_file else None
    signer = load_signer(key_file, writer_env.get(rp.signing_key_env)) if writer_env is not None else None
    return Keys(signer=signer, trusted=trusted_keys(rp, folder))


@dataclass(frozen=True)
class Keys:
    """What a registry client holds: its signing key (None: it cannot write) and the trusted keys."""

    signer: Ed25519PrivateKey | None = None
    trusted: tuple[str, ...] = ()

    def sign(self, entry_hash: str) -> dict[str, str] | None:
        if self.signer is None:
            return None
        return {"key": public_key(self.signer), "sig": _b64(self.signer.sign(entry_hash.encode("ascii")))}


def _valid(signature: Any, entry_hash: str) -> bool:
    try:
        key = Ed25519PublicKey.from_public_bytes(base64.b64decode(signature["key"], validate=True))
        key.verify(base64.b64decode(signature["sig"], validate=True), str(entry_hash).encode("ascii"))
        return True
    except (InvalidSignature, ValueError, TypeError, KeyError):
        return False


def problems(entries: list[dict[str, Any]], trusted: tuple[str, ...]) -> list[str]:
    """Every entry must carry a valid signature by a key trusted at that point of the ledger."""
    return _walk(entries, trusted)[0]


def allowed_at_tip(entries: list[dict[str, Any]], trusted: tuple[str, ...]) -> set[str]:
    """The keys that may sign the next entry: the trusted ones, as rotations since changed them."""
    return _walk(entries, trusted)[1]


def _walk(entries: list[dict[str, Any]], trusted: tuple[str, ...]) -> tuple[list[str], set[str]]:
    allowed, out = set(trusted), []
    for line, entry in enumerate(entries, start=1):
        signature = entry.get("signature")
        what = f"ledger line {line} ({entry.get('action')}"
        if not isinstance(signature, dict):
            out.append(f"{what}): unsigned")
            continue
        if signature.get("key") not in allowed:
            out.append(f"{what}): signed by a key the registry does not trust"
                       + (" (any more: retired)" if signature.get("key") in trusted else ""))
            continue
        if not _valid(signature, entry.get("hash", "")):
            out.append(f"{what}): signature does not match the entry")
            continue
        if entry.get("action") == "rotate_key":
            allowed.add(entry.get("new_key"))
            if entry.get("retire_key"):
                allowed.discard(signature["key"])
    return out, allowed
