//! One account's view of the chunk store: its chunks sealed under its own key.
//!
//! The account's key (32 random bytes, kept wrapped by the chunk-store key, see `commands`) derives
//! two keys: one names chunks, one seals them. A chunk with content id `id` (its BLAKE3) is kept as
//! `<BLAKE3 keyed by the naming key, of id>.sealed`: the same content stored twice by one account
//! has one name (deduplication holds within the account), two accounts' copies have unrelated
//! names, and a name tells nothing of the content. The file holds the zstd-compressed chunk sealed
//! with XChaCha20-Poly1305 (a random 24-byte nonce; the name is the associated data, so a file
//! moved to another name does not open). Without the account's key (an erased account) the files
//! can be neither opened nor told apart from another account's.
//!
//! Chunks stored before sealing (`<id>.zst`, [`Form::Plain`]) are still read, checked by their id,
//! but do not count as stored: what is kept again is kept sealed. An account that has no key yet
//! reads only those ([`AccountStore::unsealed`]) and stores nothing.

use std::sync::Arc;

use async_trait::async_trait;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore as _;

use crate::store::{ChunkStore, Form, ProviderStore, StoreError, Stored, check_content, check_id, compress, decompress};

/// The first byte of a sealed file: how it was sealed (XChaCha20-Poly1305 over zstd).
const SEALED_V1: u8 = 1;
const NONCE: usize = 24;
/// What [`blake3::derive_key`] derives each key of an account for.
const SEAL_CONTEXT: &str = "cloudsync chunk store 2026-12-06 sealing key";
const NAME_CONTEXT: &str = "cloudsync chunk store 2026-12-06 naming key";

/// The chunk store as one account sees it.
#[derive(Clone)]
pub struct AccountStore {
    store: Arc<ProviderStore>,
    /// `None` for an account without a key yet, which reads only plain chunks.
    keys: Option<Keys>,
}

/// What an account's key derives.
#[derive(Clone)]
struct Keys {
    cipher: XChaCha20Poly1305,
    names: [u8; 32],
}

impl AccountStore {
    /// The account whose key is `account_key`, on `store`.
    pub fn new(store: Arc<ProviderStore>, account_key: &[u8; 32]) -> Self {
        let seal = blake3::derive_key(SEAL_CONTEXT, account_key);
        Self {
            store,
            keys: Some(Keys {
                cipher: XChaCha20Poly1305::new(&seal.into()),
                names: blake3::derive_key(NAME_CONTEXT, account_key),
            }),
        }
    }

    /// An account that has no key yet: it reads the plain chunks stored before sealing, and
    /// stores nothing.
    pub fn unsealed(store: Arc<ProviderStore>) -> Self {
        Self { store, keys: None }
    }

    /// The name of the account's sealed file for the chunk `id` (none without a key).
    pub fn name_of(&self, id: &str) -> Option<String> {
        self.keys
            .as_ref()
            .map(|keys| blake3::keyed_hash(&keys.names, id.as_bytes()).to_hex().to_string())
    }

    /// The files that may hold the chunk `id` for this account: its sealed file and, from before
    /// sealing, the plain one.
    ///
    /// # Errors
    /// A malformed id.
    pub fn files_of(&self, id: &str) -> Result<Vec<Stored>, StoreError> {
        check_id(id)?;
        let sealed = self.name_of(id).map(|name| Stored { name, form: Form::Sealed });
        let plain = Stored {
            name: id.to_owned(),
            form: Form::Plain,
        };
        Ok(sealed.into_iter().chain([plain]).collect())
    }

    fn keys(&self) -> Result<&Keys, StoreError> {
        self.keys.as_ref().ok_or_else(|| {
            StoreError::Io(std::io::Error::other(
                "this account has no chunk-store key yet: nothing is stored for it",
            ))
        })
    }

    fn seal(&self, name: &str, data: &[u8]) -> Result<Vec<u8>, StoreError> {
        let mut nonce = [0_u8; NONCE];
        rand::thread_rng().fill_bytes(&mut nonce);
        let compressed = compress(data)?;
        let sealed = self
            .keys()?
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &compressed,
                    aad: name.as_bytes(),
                },
            )
            .map_err(|_| StoreError::Io(std::io::Error::other("sealing a chunk failed")))?;
        let mut out = Vec::with_capacity(1 + NONCE + sealed.len());
        out.push(SEALED_V1);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    fn open(&self, id: &str, name: &str, stored: &[u8]) -> Result<Vec<u8>, StoreError> {
        let unopenable = || StoreError::Unopenable(id.to_owned());
        let (&version, rest) = stored.split_first().ok_or_else(unopenable)?;
        if version != SEALED_V1 || rest.len() < NONCE {
            return Err(unopenable());
        }
        let (nonce, sealed) = rest.split_at(NONCE);
        let compressed = self
            .keys()?
            .cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: name.as_bytes(),
                },
            )
            .map_err(|_| unopenable())?;
        decompress(id, &compressed)
    }
}

#[async_trait]
impl ChunkStore for AccountStore {
    async fn put(&self, id: &str, data: &[u8]) -> Result<bool, StoreError> {
        Ok(self.put_many(&[(id.to_owned(), data)]).await? == 1)
    }

    /// Whether the account's sealed file of the chunk is there (a plain one from before sealing
    /// is read, but is not counted: what is kept again is kept sealed).
    async fn has(&self, id: &str) -> Result<bool, StoreError> {
        check_id(id)?;
        match self.name_of(id) {
            Some(name) => self.store.exists(&name, Form::Sealed).await,
            None => Ok(false),
        }
    }

    async fn get(&self, id: &str) -> Result<Vec<u8>, StoreError> {
        check_id(id)?;
        if let Some(name) = self.name_of(id)
            && let Some(stored) = self.store.read(&name, Form::Sealed).await?
        {
            return self.open(id, &name, &stored);
        }
        match self.store.read(id, Form::Plain).await? {
            Some(stored) => decompress(id, &stored),
            None => Err(StoreError::Missing(id.to_owned())),
        }
    }

    /// Deletes the account's sealed file of the chunk (a plain one may be another account's too:
    /// the collector lets those go).
    async fn delete(&self, id: &str) -> Result<(), StoreError> {
        check_id(id)?;
        match self.name_of(id) {
            Some(name) => self.store.remove(&Stored { name, form: Form::Sealed }).await,
            None => Ok(()),
        }
    }

    async fn put_many(&self, chunks: &[(String, &[u8])]) -> Result<usize, StoreError> {
        let keys = self.keys()?;
        let mut named = Vec::with_capacity(chunks.len());
        for (id, data) in chunks {
            check_id(id)?;
            check_content(id, data)?;
            named.push((blake3::keyed_hash(&keys.names, id.as_bytes()).to_hex().to_string(), *data));
        }
        self.store
            .write_new(Form::Sealed, &named, &|name, data| self.seal(name, data))
            .await
    }

    async fn make_durable(&self, ids: &[String]) -> Result<(), StoreError> {
        let names: Vec<String> = ids.iter().filter_map(|id| self.name_of(id)).collect();
        self.store.sync_names(&names, Form::Sealed).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(store: &Arc<ProviderStore>, seed: u8) -> AccountStore {
        AccountStore::new(Arc::clone(store), &[seed; 32])
    }

    /// Every file of the store, as stored.
    fn raw_files(dir: &std::path::Path) -> Vec<Vec<u8>> {
        walk(dir).into_iter().map(|path| std::fs::read(path).expect("read")).collect()
    }

    fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).expect("list") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                files.extend(walk(&path));
            } else {
                files.push(path);
            }
        }
        files
    }

    #[tokio::test]
    async fn an_accounts_chunks_are_sealed_named_by_its_key_and_checked() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(ProviderStore::in_folder(dir.path()).expect("store"));
        let (alice, bob) = (account(&store, 1), account(&store, 2));
        let secret = b"the quarterly figures of a small company, written out in words. ".repeat(200);
        let id = blake3::hash(&secret).to_hex().to_string();

        assert!(alice.put(&id, &secret).await.expect("put"));
        assert!(!alice.put(&id, &secret).await.expect("again"), "one account stores a content once");
        assert!(bob.put(&id, &secret).await.expect("put"), "another account has its own copy");
        assert_eq!(alice.get(&id).await.expect("get"), secret);
        assert_eq!(bob.get(&id).await.expect("get"), secret);
        assert!(alice.has(&id).await.expect("has"));

        let listed = store.list().await.expect("list");
        assert_eq!(listed.len(), 2);
        assert!(listed.iter().all(|s| s.form == Form::Sealed && s.name != id));
        assert_ne!(alice.name_of(&id), bob.name_of(&id));
        assert!(alice.name_of(&id).is_some_and(|name| name != id));
        // Neither the content, nor a piece of it, nor its id is in any file.
        for file in raw_files(dir.path()) {
            assert!(
                !file.windows(32).any(|w| secret.windows(32).any(|s| s == w)),
                "plaintext in a chunk file"
            );
            assert!(!file.windows(id.len()).any(|w| w == id.as_bytes()));
        }

        // A file put in another's place, a flipped bit, or a wrong key: refused, never returned.
        let path = |who: &AccountStore| {
            let name = who.name_of(&id).expect("a key");
            dir.path().join(&name[..2]).join(format!("{name}.sealed"))
        };
        let bobs = std::fs::read(path(&bob)).expect("read");
        let alices = std::fs::read(path(&alice)).expect("read");
        std::fs::write(path(&alice), &bobs).expect("swap");
        assert!(matches!(alice.get(&id).await, Err(StoreError::Unopenable(_))));
        let mut flipped = alices.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        std::fs::write(path(&alice), &flipped).expect("flip");
        assert!(matches!(alice.get(&id).await, Err(StoreError::Unopenable(_))));
        std::fs::write(path(&alice), &alices).expect("restore");
        assert_eq!(alice.get(&id).await.expect("get"), secret);

        // Bytes that do not hash to the id are refused; deleting is the account's own file only.
        let other = blake3::hash(b"other").to_hex().to_string();
        assert!(matches!(alice.put(&other, &secret).await, Err(StoreError::Damaged(_))));
        assert!(matches!(alice.get(&other).await, Err(StoreError::Missing(_))));
        alice.delete(&id).await.expect("delete");
        assert!(!alice.has(&id).await.expect("has"));
        assert_eq!(bob.get(&id).await.expect("bob's is still there"), secret);
    }

    #[tokio::test]
    async fn chunks_stored_before_sealing_are_still_read() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(ProviderStore::in_folder(dir.path()).expect("store"));
        let data = b"an earlier version, kept before chunks were sealed".repeat(50);
        let id = crate::put_content(&*store, &data).await.expect("stored plain");
        let alice = account(&store, 7);
        assert_eq!(crate::get_content(&alice, &id).await.expect("read through the account"), data);
        let unsealed = AccountStore::unsealed(Arc::clone(&store));
        assert_eq!(crate::get_content(&unsealed, &id).await.expect("and without a key"), data);
        assert!(unsealed.put(&id, &data).await.is_err(), "an account without a key stores nothing");
        // A plain chunk is read but does not count as stored: what is kept again is sealed.
        let manifest = crate::get_manifest(&alice, &id).await.expect("manifest");
        assert!(!alice.has(&manifest.chunks[0].id).await.expect("has"));
        assert!(alice.put(&manifest.chunks[0].id, &data).await.expect("sealed now"));
        assert!(alice.has(&manifest.chunks[0].id).await.expect("has"));
        // What the account stores from now on is sealed, beside the plain files.
        let more = b"a new version".repeat(40);
        let sealed = crate::put_content(&alice, &more).await.expect("stored sealed");
        assert_eq!(crate::get_content(&alice, &sealed).await.expect("read"), more);
        assert!(matches!(crate::get_content(&*store, &sealed).await, Err(StoreError::Missing(_))));
        let forms: Vec<Form> = store.list().await.expect("list").into_iter().map(|s| s.form).collect();
        assert!(forms.contains(&Form::Plain) && forms.contains(&Form::Sealed));
    }
}
