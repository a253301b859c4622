//! Contacts: adding one from its card, naming it, finding it, listing them, verifying one.

use sotto_protocol::card::Card;
use sotto_protocol::identity::{safety_number, AccountKey};

use super::{
    ContactError, ContactView, Service, Signal, Verification, MAX_CONTACTS, MAX_NAME_CHARS,
};
use crate::clock::unix_ms;
use crate::store::{self, Batch};

impl Service {
    pub(super) fn view_contact(key: &AccountKey, c: &store::Contact) -> ContactView {
        let display_name = Card::from_bytes(&c.card)
            .map(|card| card.body().name.clone())
            .unwrap_or_default();
        ContactView {
            name: c.name.clone(),
            address: key.address(),
            fingerprint: key.fingerprint(),
            display_name,
            added_at: c.added_at,
            request: c.request,
        }
    }

    /// Find a contact by name or address.
    pub fn resolve(&self, who: &str) -> Result<(AccountKey, store::Contact), ContactError> {
        let store = &self.inner.store;
        let key = match store.contact_named(who)? {
            Some(k) => Some(k),
            None => AccountKey::from_address(who).ok(),
        };
        let key = key.ok_or_else(|| ContactError::Unknown(who.to_owned()))?;
        let contact = store
            .contact(&key)?
            .ok_or_else(|| ContactError::Unknown(who.to_owned()))?;
        Ok((key, contact))
    }

    /// The name a contact called `display` gets by default: lower case, spaces as dashes,
    /// and a number after it if it is taken.
    pub(super) fn default_name(&self, display: &str) -> Result<String, ContactError> {
        let base: String = display
            .trim()
            .to_lowercase()
            .chars()
            .map(|c| if c.is_whitespace() { '-' } else { c })
            .filter(|c| !c.is_control())
            .take(MAX_NAME_CHARS - 4)
            .collect();
        let base = if base.is_empty() {
            "contact".to_owned()
        } else {
            base
        };
        let store = &self.inner.store;
        if !store.name_taken(&base)? {
            return Ok(base);
        }
        for i in 2..1000 {
            let candidate = format!("{base}-{i}");
            if !store.name_taken(&candidate)? {
                return Ok(candidate);
            }
        }
        Err(ContactError::NameTaken(base))
    }

    /// `contact.add`
    pub async fn add_contact(
        &self,
        card: &str,
        name: Option<&str>,
    ) -> Result<ContactView, ContactError> {
        let card = Card::from_uri(card)?;
        let guard = self.inner.account.lock().await;
        let account = guard.as_ref().ok_or(ContactError::NoAccount)?;
        if card.account() == account.public() {
            return Err(ContactError::OwnCard);
        }
        if let Some(n) = name {
            if n.is_empty()
                || n.chars().count() > MAX_NAME_CHARS
                || n.chars().any(|c| c.is_control() || c.is_whitespace())
            {
                return Err(ContactError::BadName);
            }
        }
        let key = card.account();
        let store = &self.inner.store;
        let mut batch = Batch::new();
        let mut contact = match store.contact(&key)? {
            Some(mut c) => {
                if let Some(new_name) = name.filter(|n| *n != c.name) {
                    if store.name_taken(new_name)? {
                        return Err(ContactError::NameTaken(new_name.to_owned()));
                    }
                    batch.remove_name(&c.name);
                    c.name = new_name.to_owned();
                }
                let old = Card::from_bytes(&c.card).ok();
                if old
                    .as_ref()
                    .is_none_or(|o| o.body().issued_at <= card.body().issued_at)
                {
                    if let Some(o) = old.filter(|o| o.body().seal_key != card.body().seal_key) {
                        batch.remove_seal_key(&o.body().seal_key);
                    }
                    c.card = card.to_bytes();
                }
                c.request = false;
                c
            }
            None => {
                if store.contact_count() >= MAX_CONTACTS {
                    return Err(ContactError::TooMany {
                        limit: MAX_CONTACTS,
                    });
                }
                let name = match name {
                    Some(n) if !store.name_taken(n)? => n.to_owned(),
                    Some(n) => return Err(ContactError::NameTaken(n.to_owned())),
                    None => self.default_name(&card.body().name)?,
                };
                store::Contact::new(
                    name,
                    card.to_bytes(),
                    false,
                    self.random_secret(),
                    unix_ms(),
                )
            }
        };
        let mut queued = None;
        if !contact.presence_sent {
            queued = Some(
                self.stage_presence(account, &key, &mut contact, &mut batch)
                    .await?,
            );
        }
        let stored_card = Card::from_bytes(&contact.card)?;
        batch.put_contact(&key, &contact, &stored_card.body().seal_key)?;
        let view = Self::view_contact(&key, &contact);
        let order = self.inner.events.order().await;
        let event = self
            .inner
            .events
            .stage(&mut batch, "contact.added", "contact", &view)?;
        store.commit(batch).await?;
        self.inner.events.publish(vec![event]);
        drop(order);
        drop(guard);
        if let Some(seq) = queued {
            self.signal(Signal::Queued(seq)).await;
        }
        self.signal(Signal::Heard(key)).await;
        if contact.node().is_some() {
            self.share_contact_nodes().await?;
        }
        Ok(view)
    }

    /// `contact.list`
    pub fn contacts(&self) -> Result<Vec<ContactView>, ContactError> {
        let mut out: Vec<ContactView> = self
            .inner
            .store
            .contacts()?
            .iter()
            .map(|(k, c)| Self::view_contact(k, c))
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// `contact.verify`
    pub async fn verify(&self, who: &str) -> Result<Verification, ContactError> {
        let guard = self.inner.account.lock().await;
        let account = guard.as_ref().ok_or(ContactError::NoAccount)?;
        let (key, contact) = self.resolve(who)?;
        Ok(Verification {
            contact: contact.name,
            safety_number: safety_number(&account.public(), &key),
            fingerprint: key.fingerprint(),
            own_fingerprint: account.public().fingerprint(),
        })
    }
}
