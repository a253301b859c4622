//! The group secret: what it yields (dead drops, envelope keys) and how a new one is
//! sealed to each member (docs/protocol.md §14.2).

use super::*;

/// A group secret. Neither `Debug` nor `Serialize`.
#[derive(Clone)]
pub struct GroupSecret(Zeroizing<[u8; 32]>);

impl GroupSecret {
    pub fn generate(rng: &mut impl rand::RngCore) -> Self {
        let mut s = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(s.as_mut());
        GroupSecret(s)
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        GroupSecret(Zeroizing::new(bytes))
    }

    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub(super) fn derive(&self, info: &[u8]) -> Zeroizing<[u8; 32]> {
        let mut out = Zeroizing::new([0u8; 32]);
        // 32 bytes is always a valid HKDF-SHA-256 output length.
        let _ = Hkdf::<Sha256>::new(None, self.0.as_ref()).expand(info, out.as_mut());
        out
    }

    /// The secret of the group's dead drops under this group secret.
    pub fn drop_secret(&self) -> deaddrop::Secret {
        deaddrop::Secret::from_bytes(*self.derive(DROP_INFO))
    }

    /// The bucket of `member` among the key dead drops of this secret (0 to
    /// [`KEY_BUCKETS`] − 1): keyed by the secret, so that only members can tell whose it is,
    /// and drawn anew with each secret.
    pub fn key_bucket(&self, member: &AccountKey) -> u8 {
        let mut info = Vec::with_capacity(KEY_BUCKET_INFO.len() + member.0.len());
        info.extend_from_slice(KEY_BUCKET_INFO);
        info.extend_from_slice(&member.0);
        self.derive(&info)[0] % KEY_BUCKETS
    }

    /// The secret of the key dead drops of `bucket` under this group secret.
    pub fn key_drop_secret(&self, bucket: u8) -> deaddrop::Secret {
        let mut info = KEY_DROP_INFO.to_vec();
        info.push(bucket % KEY_BUCKETS);
        deaddrop::Secret::from_bytes(*self.derive(&info))
    }

    /// Seal this secret to each of `members` (account, seal key).
    pub fn rekey(
        &self,
        members: &[(AccountKey, [u8; 32])],
        rng: &mut (impl rand::RngCore + rand::CryptoRng),
    ) -> Result<Rekey, GroupError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(seed.as_mut());
        let ephemeral = Curve25519SecretKey::from_slice(&seed);
        let ephemeral_public = Curve25519PublicKey::from(&ephemeral).to_bytes();
        let mut boxes = Vec::with_capacity(members.len());
        for (account, seal) in members {
            let key = box_key(&ephemeral, seal)
                .ok_or(GroupError::Invalid("a member's seal key is not usable"))?;
            let sealed = ChaCha20Poly1305::new(Key::from_slice(key.as_ref()))
                .encrypt(
                    Nonce::from_slice(&[0u8; 12]),
                    AeadPayload {
                        msg: self.0.as_ref(),
                        aad: &box_aad(&ephemeral_public, account),
                    },
                )
                .map_err(|_| GroupError::Invalid("sealing a secret failed"))?;
            boxes.push((tag(account), sealed));
        }
        Ok(Rekey {
            ephemeral: ephemeral_public,
            boxes,
        })
    }

    /// The secret `rekey` sealed to `me`, if it sealed one.
    pub fn open_rekey(rekey: &Rekey, me: &AccountKey, seal: &SealKey) -> Option<GroupSecret> {
        let (_, sealed) = rekey.boxes.iter().find(|(t, _)| t == &tag(me))?;
        let mine = Curve25519SecretKey::from_slice(&seal.secret_bytes());
        let shared = mine.diffie_hellman(&Curve25519PublicKey::from_bytes(rekey.ephemeral))?;
        let key = hkdf32(shared.as_bytes(), REKEY_INFO);
        let plain = ChaCha20Poly1305::new(Key::from_slice(key.as_ref()))
            .decrypt(
                Nonce::from_slice(&[0u8; 12]),
                AeadPayload {
                    msg: sealed,
                    aad: &box_aad(&rekey.ephemeral, me),
                },
            )
            .ok()?;
        let bytes: [u8; 32] = plain.as_slice().try_into().ok()?;
        Some(GroupSecret::from_bytes(bytes))
    }
}

fn hkdf32(ikm: &[u8], info: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut out = Zeroizing::new([0u8; 32]);
    let _ = Hkdf::<Sha256>::new(None, ikm).expand(info, out.as_mut());
    out
}

fn box_key(ephemeral: &Curve25519SecretKey, seal: &[u8; 32]) -> Option<Zeroizing<[u8; 32]>> {
    let shared = ephemeral.diffie_hellman(&Curve25519PublicKey::from_bytes(*seal))?;
    Some(hkdf32(shared.as_bytes(), REKEY_INFO))
}

fn box_aad(ephemeral: &[u8; 32], account: &AccountKey) -> Vec<u8> {
    let mut aad = ephemeral.to_vec();
    aad.extend_from_slice(&account.0);
    aad
}
