"""A ledger signed with Ed25519 against an attacker who can write the registry's storage but holds
no key: every rewrite, swap, deletion and replay is named by `verify`, and an unsigned write to a
signed registry is refused."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.core.errors import ConfigError
from pipelines.registry import signing
from pipelines.registry import store as registry
from pipelines.registry.signing import Keys

MODEL = "text-classifier"


def _candidate(path: Path, marker: bytes):
    (path / "adapter").mkdir(parents=True)
    (path / "adapter" / "adapter_model.safetensors").write_bytes(marker)
    (path / "train_config.json").write_text(json.dumps({"base_model": "minilm", "base_hash": "h", "params": {}}))
    from pipelines.training.modeling import candidate_hash

    decision = path.parent / f"{path.name}.decision.json"
    decision.write_text(json.dumps({"candidate_hash": candidate_hash(path), "passed": True, "rules": []}))
    return path, decision


def _key():
    return signing.load_key(signing.new_key_pem(), "test")


@pytest.fixture
def signed(tmp_path):
    """A registry whose ledger the promoting component signs: init, two promotions."""
    key = _key()
    keys = Keys(signer=key, trusted=(signing.public_key(key),))
    store = registry.open_store(str(tmp_path / "registry"), MODEL, keys)
    registry.init(store, by="ci")
    for i in (1, 2):
        registry.promote(store, MODEL, *_candidate(tmp_path / f"c{i}", bytes([i])), None, by="ci")
    return store, keys, tmp_path


def _rewrite(store, entries) -> None:
    """What an attacker without the key can do: rewrite the ledger and recompute every hash and the head."""
    prev = registry.GENESIS
    for e in entries:
        e["prev_hash"] = prev
        e["hash"] = registry.entry_hash(e)
        prev = e["hash"]
    Path(store.path(registry.LEDGER)).write_bytes(b"".join(registry._canonical(e) + b"\n" for e in entries))
    Path(store.path(registry.HEAD)).write_bytes(registry._canonical({"seq": len(entries), "hash": prev}))


def _reader(store, keys):
    """A verifier: trusts the keys, holds no signing key."""
    return registry.open_store(str(Path(store.base).parent), MODEL, Keys(trusted=keys.trusted))


def test_a_signed_ledger_verifies_and_every_entry_carries_a_signature(signed):
    store, keys, _ = signed
    assert registry.verify(_reader(store, keys)) == []
    assert all(e["signature"]["key"] == keys.trusted[0] for e in registry.read_ledger(store))


def test_readers_of_a_rewritten_ledger_fail_closed(signed):
    """Serving, lineage and promotion read the ledger through read_ledger: with trusted keys set, a
    ledger whose signatures do not hold yields nothing (the swap below would serve other weights)."""
    from pipelines.core.errors import CheckFailed

    store, keys, _ = signed
    entries = registry.read_ledger(store)
    entries[2]["aliases"] = {"champion": 1}
    _rewrite(store, entries)
    with pytest.raises(CheckFailed, match="ledger line 3 \\(promote\\): signature does not match the entry"):
        registry.read_ledger(_reader(store, keys))
    assert registry.aliases(registry.read_ledger(registry.open_store(str(Path(store.base).parent), MODEL))) == {
        "champion": 1}  # a reader that trusts no key is fooled: configure registry.trusted_keys


@pytest.mark.parametrize("trusted, says", [
    (["not base64!"], "is not a base64 Ed25519 public key (32 bytes)"),
    (["AAAA"], "is not a base64 Ed25519 public key (32 bytes)"),
])
def test_a_bad_trusted_key_is_a_clear_config_error(trusted, says):
    from pipelines.core.config import parse_params

    with pytest.raises(ConfigError, match="registry.trusted_keys"):
        parse_params({"registry": {"trusted_keys": trusted}})
    try:
        parse_params({"registry": {"trusted_keys": trusted}})
    except ConfigError as err:
        assert says in str(err)


def test_keys_from_params_sign_only_for_a_writer(tmp_path):
    from pipelines.core.config import parse_params

    pem = signing.new_key_pem()
    public = signing.public_key(signing.load_key(pem, "t"))
    rp = parse_params({"registry": {"trusted_keys": [public]}}).registry
    assert signing.keys_for(rp) == Keys(trusted=(public,))  # a reader: no key loaded
    writer = signing.keys_for(rp, {"PIPELINES_REGISTRY_SIGNING_KEY": pem.decode()})
    assert signing.public_key(writer.signer) == public
    (tmp_path / "k.pem").write_bytes(pem)
    from_file = parse_params({"registry": {"trusted_keys": [public], "signing_key_file": str(tmp_path / "k.pem")}})
    with pytest.raises(ConfigError, match="is readable by others \\(mode 0644\\); a private key must be mode 0600"):
        signing.keys_for(from_file.registry, {})  # a key others can read is no one's key
    assert signing.keys_for(from_file.registry) == Keys(trusted=(public,))  # a reader never opens it
    (tmp_path / "k.pem").chmod(0o600)
    assert signing.public_key(signing.keys_for(from_file.registry, {}).signer) == public
    with pytest.raises(ConfigError, match="not a PEM private key"):
        signing.keys_for(rp, {"PIPELINES_REGISTRY_SIGNING_KEY": "garbage"})


def test_a_rewritten_ledger_with_every_hash_recomputed_is_named(signed):
    store, keys, _ = signed
    entries = registry.read_ledger(store)
    entries[1]["by"] = "someone-else"  # who promoted v1, rewritten; hashes recomputed, signatures kept
    _rewrite(store, entries)
    problems = registry.verify(_reader(store, keys))
    assert problems == ["ledger line 2 (promote): signature does not match the entry (+1 more)"]  # and line 3's
    plain = registry.open_store(str(Path(store.base).parent), MODEL)  # trusting no key: the hash chain is fooled
    assert registry.verify(plain) == []


def test_swapped_files_and_manifest_with_the_ledger_made_consistent_are_named(signed):
    store, keys, tmp_path = signed
    entries = registry.read_ledger(store)
    vdir = Path(store.path("versions", "v0002"))
    (vdir / "files" / "adapter" / "adapter_model.safetensors").write_bytes(b"evil weights")
    manifest = json.loads((vdir / "manifest.json").read_text())
    manifest["files"]["adapter/adapter_model.safetensors"] = registry._sha(b"evil weights")
    data = json.dumps(manifest, indent=2, sort_keys=True).encode()
    (vdir / "manifest.json").write_bytes(data)
    entries[2]["registered"]["manifest_sha256"] = registry._sha(data)  # the ledger agrees with the swap
    _rewrite(store, entries)
    problems = registry.verify(_reader(store, keys))
    assert problems == ["ledger line 3 (promote): signature does not match the entry"]


def test_an_entry_signed_by_another_key_or_unsigned_is_named(signed):
    store, keys, _ = signed
    entries = registry.read_ledger(store)
    mallory = _key()
    entries[2]["reason"] = "forged"
    entries[2]["hash"] = registry.entry_hash({**entries[2], "prev_hash": entries[1]["hash"]})
    del entries[1]["signature"]
    _rewrite(store, entries)
    plain = registry.open_store(str(Path(store.base).parent), MODEL)  # no keys: reads without checking
    entries = registry.read_ledger(plain)
    entries[2]["signature"] = Keys(signer=mallory).sign(entries[2]["hash"])
    Path(store.path(registry.LEDGER)).write_bytes(b"".join(registry._canonical(e) + b"\n" for e in entries))
    problems = registry.verify(_reader(store, keys))
    assert problems == ["ledger line 2 (promote): unsigned (+1 more)"]
    assert signing.problems(registry.read_ledger(plain), keys.trusted) == [  # every problem, line by line
        "ledger line 2 (promote): unsigned", "ledger line 3 (promote): signed by a key the registry does not trust"]


def test_a_replayed_entry_is_named(signed):
    store, keys, _ = signed
    entries = registry.read_ledger(store)
    replay = dict(entries[1])  # v1's promotion, signed, appended again to make v1 champion
    replay["seq"] = len(entries) + 1
    _rewrite(store, [*entries, replay])
    problems = registry.verify(_reader(store, keys))
    assert "ledger line 4 (promote): signature does not match the entry" in problems


def test_a_signed_registry_refuses_an_unsigned_write_and_nothing_is_stored(signed):
    store, keys, tmp_path = signed
    before = Path(store.path(registry.LEDGER)).read_bytes()
    with pytest.raises(ConfigError, match="writing to it needs the signing key"):
        registry.move_alias(_reader(store, keys), MODEL, "champion", 1, reason="rollback without a key")
    assert Path(store.path(registry.LEDGER)).read_bytes() == before


def test_key_rotation_is_an_entry_signed_by_the_old_key(signed):
    store, keys, _ = signed
    new = _key()
    registry.rotate_key(store, signing.public_key(new), retire=True)
    rotated = registry.open_store(str(Path(store.base).parent), MODEL, Keys(signer=new, trusted=keys.trusted))
    registry.move_alias(rotated, MODEL, "champion", 1, reason="rollback signed by the new key")
    assert registry.verify(_reader(store, keys)) == []  # trusted: the old key, which introduced the new one
    before = Path(store.path(registry.LEDGER)).read_bytes()
    with pytest.raises(ConfigError, match="is not trusted at the tip of this registry's ledger"):
        registry.move_alias(store, MODEL, "champion", 2, reason="the retired key signs once more")
    assert Path(store.path(registry.LEDGER)).read_bytes() == before  # refused before it was written
    assert registry.verify(_reader(store, keys)) == []
