//! API keys: random secrets shown once, stored as SHA-256 hashes. A fast hash is enough because keys are
//! 192-bit random strings, not passwords: nobody can guess one from its hash by trying candidates.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::RngCore;
use sha2::{Digest, Sha256};

use super::{Db, now_text};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Subscribe,
    Publish,
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Subscribe => "subscribe",
            Scope::Publish => "publish",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        match s {
            "subscribe" => Some(Scope::Subscribe),
            "publish" => Some(Scope::Publish),
            "admin" => Some(Scope::Admin),
            _ => None,
        }
    }
}

/// Who a request is made by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub key_id: String,
    pub tenant: String,
    pub scope: Scope,
}

/// A key just created: the secret exists only here (and its `Debug` form leaves it out).
#[derive(Clone)]
pub struct NewKey {
    pub id: String,
    pub secret: String,
    pub principal: Principal,
}

impl std::fmt::Debug for NewKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewKey").field("id", &self.id).field("principal", &self.principal).finish_non_exhaustive()
    }
}

impl NewKey {
    fn generate(tenant: &str, scope: Scope) -> NewKey {
        let mut bytes = [0u8; 24];
        rand::thread_rng().fill_bytes(&mut bytes);
        let secret = format!("hsda_{}_{}", scope.as_str(), hex::encode(bytes));
        let id = format!("key_{}", uuid::Uuid::new_v4().simple());
        NewKey { id: id.clone(), secret, principal: Principal { key_id: id, tenant: tenant.to_string(), scope } }
    }
}

fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

impl Db {
    pub async fn create_key(&self, tenant: &str, scope: Scope) -> sqlx::Result<NewKey> {
        let key = NewKey::generate(tenant, scope);
        self.insert_key(&key, "").await?;
        Ok(key)
    }

    /// Creates a key only when the store holds no live (unrevoked) key at all, so `hsda serve` can hand out a
    /// starter admin key on a new database without adding one at every start. `None` when a live key exists.
    pub async fn create_key_if_none_live(&self, tenant: &str, scope: Scope) -> sqlx::Result<Option<NewKey>> {
        let key = NewKey::generate(tenant, scope);
        // One statement, so the check and the insert see the same keys.
        let inserted =
            self.insert_key(&key, "WHERE NOT EXISTS (SELECT 1 FROM api_keys WHERE revoked_at IS NULL)").await?;
        Ok(inserted.then_some(key))
    }

    /// Stores `key` if `condition` (a `WHERE` clause, or nothing) holds; whether it was stored.
    async fn insert_key(&self, key: &NewKey, condition: &str) -> sqlx::Result<bool> {
        let sql = format!(
            "INSERT INTO api_keys (id, tenant, scope, key_hash, prefix, created_at) \
             SELECT $1, $2, $3, $4, $5, $6 {condition}"
        );
        let done = sqlx::query(&sql)
            .bind(&key.id)
            .bind(&key.principal.tenant)
            .bind(key.principal.scope.as_str())
            .bind(hash(&key.secret))
            .bind(&key.secret[..key.secret.len().min(16)])
            .bind(now_text())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Every key (of `tenant`, when given), oldest first: ids, scopes and the first characters of each secret,
    /// never the secret.
    pub async fn list_keys(&self, tenant: Option<&str>) -> sqlx::Result<Vec<KeyInfo>> {
        sqlx::query_as(
            "SELECT id, tenant, scope, prefix, created_at, revoked_at FROM api_keys \
             WHERE tenant = COALESCE($1, tenant) ORDER BY created_at, id",
        )
        .bind(tenant)
        .fetch_all(&self.pool)
        .await
    }

    /// Revokes a key: this process refuses it at once, other processes once their cache of known keys
    /// expires ([`KEY_CACHE_TTL`]). `false` when no unrevoked key has that id.
    pub async fn revoke_key(&self, id: &str) -> sqlx::Result<bool> {
        let done = sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
            .bind(now_text())
            .bind(id)
            .execute(&self.pool)
            .await?;
        self.key_cache.clear();
        Ok(done.rows_affected() == 1)
    }

    /// The principal of a presented key, if it is known and not revoked. Known keys are remembered for
    /// [`KEY_CACHE_TTL`], so a busy client costs no query per request; unknown keys are asked every time, so
    /// a key works the moment it is created.
    pub async fn authenticate(&self, secret: &str) -> sqlx::Result<Option<Principal>> {
        let key_hash = hash(secret);
        if let Some(principal) = self.key_cache.get(&key_hash) {
            return Ok(Some(principal));
        }
        let generation = self.key_cache.generation();
        let row: Option<(String, String, String)> =
            sqlx::query_as("SELECT id, tenant, scope FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL")
                .bind(&key_hash)
                .fetch_optional(&self.pool)
                .await?;
        let principal =
            row.and_then(|(key_id, tenant, scope)| Some(Principal { key_id, tenant, scope: Scope::parse(&scope)? }));
        if let Some(p) = &principal {
            self.key_cache.put(generation, key_hash, p.clone());
        }
        Ok(principal)
    }
}

/// What `hsda keys list` shows of a key.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct KeyInfo {
    pub id: String,
    pub tenant: String,
    pub scope: String,
    /// The first characters of the secret, to tell keys apart.
    pub prefix: String,
    pub created_at: String,
    pub revoked_at: Option<String>,
}

/// How long a known key is trusted without asking the database again. [`Db::revoke_key`] clears this
/// process's cache; other processes (a server, when `hsda keys revoke` runs beside it) notice within this
/// (4 s, so that "refused within 5 seconds", as the documentation says, holds with a request in flight).
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(4);
/// Beyond this many remembered keys the cache starts over (bounded memory whatever the callers do).
const KEY_CACHE_CAPACITY: usize = 10_000;

/// Recently authenticated keys, by hash.
#[derive(Debug, Default)]
pub struct KeyCache {
    /// The known keys, and how many times the cache was cleared (a revocation): a lookup that read the key
    /// before a revocation must not put it back after.
    known: Mutex<(KnownKeys, u64)>,
}

/// Principals by key hash, with when each was looked up.
type KnownKeys = HashMap<String, (Principal, Instant)>;

impl KeyCache {
    fn get(&self, key_hash: &str) -> Option<Principal> {
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        let (principal, at) = known.0.get(key_hash)?;
        (at.elapsed() < KEY_CACHE_TTL).then(|| principal.clone())
    }

    /// Read before looking a key up in the database; [`KeyCache::put`] takes it back.
    fn generation(&self) -> u64 {
        self.known.lock().unwrap_or_else(|e| e.into_inner()).1
    }

    /// Remembers a key looked up at `generation`, unless the cache was cleared since.
    fn put(&self, generation: u64, key_hash: String, principal: Principal) {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        if known.1 != generation {
            return;
        }
        if known.0.len() >= KEY_CACHE_CAPACITY {
            known.0.clear();
        }
        known.0.insert(key_hash, (principal, Instant::now()));
    }

    /// Forgets every key (after a revocation).
    pub fn clear(&self) {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        known.0.clear();
        known.1 += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_cache_forgets_after_its_ttl_and_on_clear() {
        let cache = KeyCache::default();
        let principal = Principal { key_id: "key_1".into(), tenant: "acme".into(), scope: Scope::Publish };
        cache.put(cache.generation(), "h".into(), principal.clone());
        assert_eq!(cache.get("h"), Some(principal.clone()));
        assert_eq!(cache.get("other"), None);
        cache.known.lock().unwrap().0.get_mut("h").unwrap().1 -= KEY_CACHE_TTL;
        assert_eq!(cache.get("h"), None, "an entry older than the TTL is not trusted");
        cache.put(cache.generation(), "h".into(), principal.clone());
        cache.clear();
        assert_eq!(cache.get("h"), None);
        // A lookup that began before a revocation does not put the key back after it.
        let before = cache.generation();
        cache.clear();
        cache.put(before, "h".into(), principal);
        assert_eq!(cache.get("h"), None);
    }

    #[test]
    fn a_new_key_debug_form_leaves_the_secret_out() {
        let principal = Principal { key_id: "key_1".into(), tenant: "acme".into(), scope: Scope::Admin };
        let key = NewKey { id: "key_1".into(), secret: "hsda_admin_0123456789abcdef".into(), principal };
        let shown = format!("{key:?}");
        assert!(shown.contains("key_1") && shown.contains("acme"), "{shown}");
        assert!(!shown.contains("0123456789abcdef"), "{shown}");
    }
}
