//! Who is calling: a token (from the gRPC metadata `authorization: Bearer <token>`) resolved to a
//! [`User`] by someone who can vouch for it — mgmtd in production, a static table in a standalone
//! deployment or a test. The client never states its own uid.

use crate::error::{MetaError, MetaResult};
use crate::perm::User;
use async_trait::async_trait;
use r3fs_types::ErrorCode;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[async_trait]
pub trait UserResolver: Send + Sync + std::fmt::Debug {
    /// The user a token belongs to; `Unauthenticated` if the token is unknown or revoked.
    async fn resolve(&self, token: &str) -> MetaResult<User>;
}

/// A fixed token table (standalone deployments and tests).
#[derive(Debug, Default)]
pub struct StaticUserResolver {
    users: HashMap<String, User>,
}

impl StaticUserResolver {
    pub fn new(users: impl IntoIterator<Item = (String, User)>) -> Self {
        Self { users: users.into_iter().collect() }
    }
}

#[async_trait]
impl UserResolver for StaticUserResolver {
    async fn resolve(&self, token: &str) -> MetaResult<User> {
        self.users
            .get(token)
            .cloned()
            .ok_or_else(|| MetaError::new(ErrorCode::Unauthenticated, "unknown token"))
    }
}

/// Caches positive answers of another resolver for `ttl`, at most `entries_max` tokens. A revoked
/// token keeps working for at most `ttl`. Failures are not cached, so a token created a moment
/// ago works at once.
#[derive(Debug)]
pub struct CachedUserResolver<R> {
    inner: R,
    ttl: Duration,
    entries_max: usize,
    cache: Mutex<HashMap<String, (User, Instant)>>,
}

impl<R: UserResolver> CachedUserResolver<R> {
    pub fn new(inner: R, ttl: Duration, entries_max: usize) -> Self {
        assert!(entries_max > 0, "cache needs room for one entry");
        Self { inner, ttl, entries_max, cache: Mutex::new(HashMap::new()) }
    }

    fn cached(&self, token: &str) -> Option<User> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.get(token).filter(|(_, at)| at.elapsed() < self.ttl).map(|(user, _)| user.clone())
    }

    fn remember(&self, token: &str, user: &User) {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= self.entries_max {
            cache.retain(|_, (_, at)| at.elapsed() < self.ttl);
        }
        if cache.len() >= self.entries_max {
            // Still full of live entries: start over rather than track recency; a miss costs one
            // mgmtd round trip.
            cache.clear();
        }
        cache.insert(token.to_string(), (user.clone(), Instant::now()));
    }
}

#[async_trait]
impl<R: UserResolver> UserResolver for CachedUserResolver<R> {
    async fn resolve(&self, token: &str) -> MetaResult<User> {
        if let Some(user) = self.cached(token) {
            return Ok(user);
        }
        let user = self.inner.resolve(token).await?;
        self.remember(token, &user);
        Ok(user)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Debug, Default)]
    struct Counting {
        calls: AtomicUsize,
    }

    #[async_trait]
    impl UserResolver for Counting {
        async fn resolve(&self, token: &str) -> MetaResult<User> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            match token.parse::<u32>() {
                Ok(uid) => Ok(User::new(uid, uid, vec![])),
                Err(_) => Err(MetaError::new(ErrorCode::Unauthenticated, "bad")),
            }
        }
    }

    #[tokio::test]
    async fn caches_hits_not_failures_and_stays_bounded() {
        let cached = CachedUserResolver::new(Counting::default(), Duration::from_secs(60), 2);
        assert_eq!(cached.resolve("7").await.unwrap().uid, 7);
        assert_eq!(cached.resolve("7").await.unwrap().uid, 7);
        assert_eq!(cached.inner.calls.load(Ordering::SeqCst), 1);
        assert!(cached.resolve("x").await.is_err());
        assert!(cached.resolve("x").await.is_err());
        assert_eq!(cached.inner.calls.load(Ordering::SeqCst), 3);
        for uid in 10..20 {
            cached.resolve(&uid.to_string()).await.unwrap();
        }
        assert!(cached.cache.lock().unwrap().len() <= 2);
    }

    #[tokio::test]
    async fn expired_entries_are_resolved_again() {
        let cached = CachedUserResolver::new(Counting::default(), Duration::ZERO, 4);
        cached.resolve("1").await.unwrap();
        cached.resolve("1").await.unwrap();
        assert_eq!(cached.inner.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn static_table() {
        let table = StaticUserResolver::new([("t".to_string(), User::root())]);
        assert!(table.resolve("t").await.unwrap().is_root());
        assert_eq!(table.resolve("u").await.unwrap_err().code, ErrorCode::Unauthenticated);
    }
}
