//! Who may connect as a name: the claim check at the upgrade.
//!
//! The decision is the core's ([`Claims::check`]); this module only runs the
//! slow Argon2 work on the blocking pool, one hash at a time, so a stream of
//! guessed tokens can cost the server at most one core and never delays chat.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use tokio::sync::Semaphore;

use crate::core::claims::{Check, Claims, TokenHash};
use crate::names::UserId;
use crate::store::Store;

/// Longest accepted token: enough for any generated secret, and a bound on
/// what one request can make the hasher read.
pub const MAX_TOKEN_BYTES: usize = 256;

/// Token checks waiting beyond this are refused with 503 at once rather than queued.
const MAX_WAITING: usize = 64;

/// How a connection was admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admitted {
    /// It presented the token of a claimed name.
    pub authenticated: bool,
    /// Its token has just claimed the name: connections without it must go.
    pub claimed_now: bool,
}

/// Why a connection was refused: an HTTP status and a one-line reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub status: StatusCode,
    pub reason: String,
}

impl Refused {
    fn unauthorized(reason: String) -> Refused {
        Refused {
            status: StatusCode::UNAUTHORIZED,
            reason,
        }
    }
}

/// The claims table and the queue in front of the hasher.
#[derive(Default)]
pub struct Gate {
    pub claims: Mutex<Claims>,
    hasher: Hasher,
    /// Durable mode: a claim is on disk before its connection is admitted.
    store: Option<Arc<Store>>,
}

struct Hasher {
    permits: Semaphore,
    waiting: AtomicUsize,
}

impl Default for Hasher {
    fn default() -> Self {
        Hasher {
            permits: Semaphore::new(1),
            waiting: AtomicUsize::new(0),
        }
    }
}

impl Hasher {
    /// Runs `work` on the blocking pool once it is this request's turn.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Refused> {
        let busy = || Refused {
            status: StatusCode::SERVICE_UNAVAILABLE,
            reason: "the server is busy checking other tokens; try again in a few seconds"
                .to_string(),
        };
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= MAX_WAITING {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(busy());
        }
        let permit = self.permits.acquire().await;
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        let _permit = permit.map_err(|_| busy())?;
        tokio::task::spawn_blocking(work).await.map_err(|_| busy())
    }
}

impl Gate {
    /// A gate with the claims durable mode loaded.
    pub fn new(store: Option<Arc<Store>>, loaded: Vec<(UserId, TokenHash)>) -> Gate {
        let mut claims = Claims::default();
        for (user, hash) in loaded {
            let _ = claims.claim(&user, hash);
        }
        Gate {
            claims: Mutex::new(claims),
            hasher: Hasher::default(),
            store,
        }
    }

    fn claims(&self) -> std::sync::MutexGuard<'_, Claims> {
        self.claims.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_claimed(&self, user: &UserId) -> bool {
        self.claims().is_claimed(user)
    }

    pub fn claimed_names(&self) -> Vec<UserId> {
        self.claims().names()
    }

    /// Admits or refuses a connection for `user` that brought `token`.
    pub async fn admit(&self, user: &UserId, token: Option<&str>) -> Result<Admitted, Refused> {
        let token = token.filter(|t| !t.is_empty());
        if let Some(t) = token {
            if t.len() > MAX_TOKEN_BYTES {
                return Err(Refused {
                    status: StatusCode::BAD_REQUEST,
                    reason: format!("token is over {MAX_TOKEN_BYTES} bytes"),
                });
            }
        }
        let check = self.claims().check(user, token);
        let wrong = || {
            Refused::unauthorized(format!(
                "the name {user} is claimed and this token does not match it; \
                 connect with the token it was claimed with (vivachat client --token), or choose another name"
            ))
        };
        match (check, token) {
            (Check::Open, _) => Ok(Admitted {
                authenticated: false,
                claimed_now: false,
            }),
            (Check::Refuse, _) | (_, None) => Err(Refused::unauthorized(format!(
                "the name {user} is claimed: connect with its token (?token=...), or choose another name"
            ))),
            (Check::Verify(hash), Some(t)) => {
                if self.verify(t, hash).await? {
                    Ok(Admitted {
                        authenticated: true,
                        claimed_now: false,
                    })
                } else {
                    Err(wrong())
                }
            }
            (Check::Claim, Some(t)) => {
                let owned = t.to_string();
                let hash = self.hasher.run(move || crate::tokens::hash(&owned)).await?;
                let claimed = self.claims().claim(user, hash.clone());
                match claimed {
                    Ok(()) => {
                        self.persist(user, &hash).await?;
                        Ok(Admitted {
                            authenticated: true,
                            claimed_now: true,
                        })
                    }
                    // Someone else claimed it while this token was hashing.
                    Err(winner) => {
                        if self.verify(t, winner).await? {
                            Ok(Admitted {
                                authenticated: true,
                                claimed_now: false,
                            })
                        } else {
                            Err(wrong())
                        }
                    }
                }
            }
        }
    }

    /// Durable mode: waits until the claim is on disk, so a crash cannot hand
    /// the name to someone else after its owner was told it is theirs.
    async fn persist(&self, user: &UserId, hash: &TokenHash) -> Result<(), Refused> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let written = match store.claim(user, hash) {
            Ok(seq) => store.committed(seq).await,
            Err(_stopped) => false,
        };
        if written {
            Ok(())
        } else {
            Err(Refused {
                status: StatusCode::SERVICE_UNAVAILABLE,
                reason: "the server is shutting down; try again in a moment".to_string(),
            })
        }
    }

    async fn verify(&self, token: &str, hash: TokenHash) -> Result<bool, Refused> {
        let token = token.to_string();
        self.hasher
            .run(move || crate::tokens::verify(&token, &hash))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::Name;

    fn bob() -> UserId {
        Name::parse("bob").unwrap()
    }

    #[tokio::test]
    async fn open_until_claimed_then_only_the_token() {
        let gate = Gate::default();
        let open = gate.admit(&bob(), None).await.unwrap();
        assert!(!open.authenticated);
        // An empty token is no token.
        assert!(!gate.admit(&bob(), Some("")).await.unwrap().authenticated);
        assert!(!gate.is_claimed(&bob()));

        let first = gate.admit(&bob(), Some("secret")).await.unwrap();
        assert_eq!(
            first,
            Admitted {
                authenticated: true,
                claimed_now: true
            }
        );
        let again = gate.admit(&bob(), Some("secret")).await.unwrap();
        assert_eq!(
            again,
            Admitted {
                authenticated: true,
                claimed_now: false
            }
        );
        for token in [None, Some(""), Some("Secret"), Some("secret ")] {
            let refused = gate.admit(&bob(), token).await.unwrap_err();
            assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{token:?}");
            assert!(refused.reason.contains("claimed"), "{}", refused.reason);
        }
        assert_eq!(gate.claimed_names(), vec![bob()]);
    }

    #[tokio::test]
    async fn an_oversized_token_is_refused_before_any_hashing() {
        let gate = Gate::default();
        let long = "x".repeat(MAX_TOKEN_BYTES + 1);
        let refused = gate.admit(&bob(), Some(&long)).await.unwrap_err();
        assert_eq!(refused.status, StatusCode::BAD_REQUEST);
        assert!(!gate.is_claimed(&bob()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn racing_first_claims_leave_exactly_one_owner() {
        let gate = std::sync::Arc::new(Gate::default());
        let tries: Vec<_> = (0..4)
            .map(|i| {
                let gate = gate.clone();
                tokio::spawn(async move { gate.admit(&bob(), Some(&format!("t{i}"))).await })
            })
            .collect();
        let mut winners = 0;
        for t in tries {
            if let Ok(admitted) = t.await.unwrap() {
                assert!(admitted.claimed_now);
                winners += 1;
            }
        }
        assert_eq!(winners, 1);
    }
}
