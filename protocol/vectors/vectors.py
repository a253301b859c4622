"""Independent test vectors for sotto's protocol derivations.

A second implementation, written from the Rust source, of:
  * the safety number        (protocol/src/identity.rs: safety_number, side_digits)
  * the proof-of-work stamp  (protocol/src/pow.rs: hash, leading_zero_bits, check, mint)
  * the dead-drop derivation (protocol/src/deaddrop.rs: Secret::drop_key,
                              DropKey::address / intro_address, Address::of_key / of_intro_key)

It recomputes the values pinned by the Rust snapshot tests (exits 1 if any differs) and
prints one new vector per derivation that the Rust tests can assert.

Needs Python 3 and the `cryptography` package (pip install cryptography) for Ed25519
key derivation from a 32-byte seed (RFC 8032). Run: python3 vectors.py
"""
import hashlib
import sys

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat


def ed25519_public(seed: bytes) -> bytes:
    """Identity::from_seed / DropKey::from_seed: RFC 8032 public key of a 32-byte seed."""
    key = Ed25519PrivateKey.from_private_bytes(seed).public_key()
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


# --- safety number (identity.rs) -----------------------------------------------------------

def side_digits(key: bytes) -> str:
    h = hashlib.sha512(b"sotto/safety-number/v1" + key).digest()
    for _ in range(5200):  # SAFETY_ITERATIONS
        h = hashlib.sha512(h + key).digest()
    # Six big-endian 5-byte chunks, each mod 100000, zero-padded to five digits.
    return "".join("%05d" % (int.from_bytes(h[i:i + 5], "big") % 100_000) for i in range(0, 30, 5))


def safety_number(a: bytes, b: bytes) -> str:
    digits = "".join(sorted([side_digits(a), side_digits(b)]))
    return " ".join(digits[i:i + 5] for i in range(0, 60, 5))


# --- proof-of-work stamp (pow.rs) ----------------------------------------------------------

MAX_DIFFICULTY = 32


def stamp_hash(address: bytes, digest: bytes, nonce: int) -> bytes:
    return hashlib.sha256(b"sotto/pow/v1" + address + digest + nonce.to_bytes(8, "big")).digest()


def leading_zero_bits(h: bytes) -> int:
    n = int.from_bytes(h, "big")
    return 256 - n.bit_length()


def check(address: bytes, digest: bytes, nonce: int, difficulty: int) -> bool:
    return leading_zero_bits(stamp_hash(address, digest, nonce)) >= min(difficulty, MAX_DIFFICULTY)


def mint(address: bytes, digest: bytes, difficulty: int, start: int, max_tries: int):
    for i in range(max_tries):
        n = (start + i) % 2**64  # start.wrapping_add(i)
        if check(address, digest, n, difficulty):
            return n
    return None


# --- dead drops (deaddrop.rs) --------------------------------------------------------------

def drop_seed(secret: bytes, epoch: int) -> bytes:
    return hashlib.sha256(b"sotto/dead-drop/seed/v1" + secret + epoch.to_bytes(8, "big")).digest()


def address_of_key(public: bytes) -> bytes:
    return hashlib.sha256(b"sotto/dead-drop/address/v1" + public).digest()


def address_of_intro_key(public: bytes) -> bytes:
    return hashlib.sha256(b"sotto/dead-drop/intro-address/v1" + public).digest()


# --- vectors -------------------------------------------------------------------------------

failures = 0


def pinned(name: str, got, want) -> None:
    global failures
    ok = got == want
    failures += not ok
    print(f"  {'OK  ' if ok else 'FAIL'} {name}: {got!r}" + ("" if ok else f" (Rust pins {want!r})"))


def new(name: str, value) -> None:
    print(f"  NEW  {name}: {value!r}")


print("safety number")
alice, bob = ed25519_public(bytes([1] * 32)), ed25519_public(bytes([2] * 32))
pinned("identity::tests::safety_number_snapshot, seeds [1;32] and [2;32]",
       safety_number(alice, bob),
       "34414 85636 68278 29674 82298 35134 49215 71754 63255 51015 94792 94143")
carol, dave = ed25519_public(bytes([3] * 32)), ed25519_public(bytes([4] * 32))
new("account key of seed [3;32]", carol.hex())
new("account key of seed [4;32]", dave.hex())
new("safety_number(seed [3;32], seed [4;32])", safety_number(carol, dave))

print("proof-of-work stamp")
a, d = bytes([1] * 32), bytes([2] * 32)
pinned("pow::tests::minted_stamps_check_and_are_bound, mint(Address([1;32]), [2;32], 12, 0, 1<<20)",
       mint(a, d, 12, 0, 1 << 20), 4651)
pinned("pow::tests::mint_gives_up, mint(Address([1;32]), [2;32], 32, 0, 10)",
       mint(a, d, 32, 0, 10), None)
a, d, start = bytes([7] * 32), bytes([8] * 32), 2**64 - 1000  # u64::MAX - 999: the search wraps
n = mint(a, d, 16, start, 1 << 20)
new(f"mint(Address([7;32]), [8;32], difficulty 16, start u64::MAX - 999 = {start}, 1<<20)", n)
new("  its stamp hash", stamp_hash(a, d, n).hex())
new("  leading zero bits", leading_zero_bits(stamp_hash(a, d, n)))

print("dead drops")
pinned("deaddrop::tests::snapshot_of_derivation, Secret [0;32], epoch 0, address",
       address_of_key(ed25519_public(drop_seed(bytes(32), 0))).hex(),
       "ae4cd4870575039cf036002ba5780239838206bab662a1d44bd06bb49013fa7c")
secret, epoch = bytes([0x42] * 32), 20_000
seed = drop_seed(secret, epoch)
public = ed25519_public(seed)
new(f"Secret [0x42;32], epoch {epoch}: drop key seed", seed.hex())
new("  drop key public", public.hex())
new("  address", address_of_key(public).hex())
new("  intro_address", address_of_intro_key(public).hex())

sys.exit(1 if failures else 0)
