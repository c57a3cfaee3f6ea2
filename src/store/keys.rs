//! API keys: random secrets shown once, stored as SHA-256 hashes. A fast hash is enough because keys are
//! 192-bit random strings, not passwords: nobody can guess one from its hash by trying candidates.

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

fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

impl Db {
    pub async fn create_key(&self, tenant: &str, scope: Scope) -> sqlx::Result<NewKey> {
        let mut bytes = [0u8; 24];
        rand::thread_rng().fill_bytes(&mut bytes);
        let secret = format!("hsda_{}_{}", scope.as_str(), hex::encode(bytes));
        let id = format!("key_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(
            "INSERT INTO api_keys (id, tenant, scope, key_hash, prefix, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&id)
        .bind(tenant)
        .bind(scope.as_str())
        .bind(hash(&secret))
        .bind(&secret[..secret.len().min(16)])
        .bind(now_text())
        .execute(&self.pool)
        .await?;
        Ok(NewKey { id: id.clone(), secret, principal: Principal { key_id: id, tenant: tenant.to_string(), scope } })
    }

    /// The principal of a presented key, if it is known and not revoked.
    pub async fn authenticate(&self, secret: &str) -> sqlx::Result<Option<Principal>> {
        let row: Option<(String, String, String)> =
            sqlx::query_as("SELECT id, tenant, scope FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL")
                .bind(hash(secret))
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.and_then(|(key_id, tenant, scope)| Some(Principal { key_id, tenant, scope: Scope::parse(&scope)? })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_key_debug_form_leaves_the_secret_out() {
        let principal = Principal { key_id: "key_1".into(), tenant: "acme".into(), scope: Scope::Admin };
        let key = NewKey { id: "key_1".into(), secret: "hsda_admin_0123456789abcdef".into(), principal };
        let shown = format!("{key:?}");
        assert!(shown.contains("key_1") && shown.contains("acme"), "{shown}");
        assert!(!shown.contains("0123456789abcdef"), "{shown}");
    }
}
