//! Who may connect as a name: the claim check at the upgrade.
//!
//! The decision is the core's ([`Claims::check`]); this module makes sure
//! nobody can jam it:
//! - A token verified once is remembered as a keyed digest (`tokens::digest`,
//!   microseconds), so the owner's next connection, and every wrong guess for
//!   a name whose token is known, is answered without Argon2.
//! - Argon2 (tens of milliseconds and 19 MiB by design) runs on one thread of
//!   its own, so it costs at most one core and one working buffer whatever
//!   the load, and never delays chat.
//! - At most [`PER_NAME`] different tokens of one name and [`PER_ADDRESS`]
//!   checks from one address wait for it (HTTP 429 beyond: the guesser is
//!   slowed, not everyone), and the same token asked twice is checked once.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use tokio::sync::{oneshot, watch};

use crate::core::claims::{Check, Claims, TokenHash};
use crate::names::UserId;
use crate::store::Store;
use crate::tokens::{digest, digest_key, same_digest, Digest};

/// Longest accepted token: enough for any generated secret, and a bound on
/// what one request can make the hasher read.
pub const MAX_TOKEN_BYTES: usize = 256;

/// Argon2 jobs waiting beyond this are refused with 503 at once rather than queued.
const MAX_WAITING: usize = 64;
/// Different unverified tokens of one name checked at once; more get 429.
pub const PER_NAME: usize = 2;
/// Argon2 checks one remote address may have waiting at once; more get 429.
/// A class behind one tunnel shares an address, so it is not 1.
pub const PER_ADDRESS: usize = 16;

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

    /// A cluster whose Redis lost its data: whether a name is claimed is not
    /// known until the nodes have put back the claims they hold.
    fn lost_claims() -> Refused {
        Refused {
            status: StatusCode::SERVICE_UNAVAILABLE,
            reason: "the cluster's Redis lost its data and the nodes are putting back the \
                     name claims they know; try again in a few seconds"
                .to_string(),
        }
    }

    fn busy() -> Refused {
        Refused {
            status: StatusCode::SERVICE_UNAVAILABLE,
            reason: "the server is busy checking other tokens; try again in a few seconds".into(),
        }
    }

    fn slow_down(why: String) -> Refused {
        Refused {
            status: StatusCode::TOO_MANY_REQUESTS,
            reason: why,
        }
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// One thread for every Argon2 computation: a bounded queue in front of it.
struct Hasher {
    jobs: SyncSender<Job>,
    /// Argon2 computations run: what the digest cache saves is visible here.
    runs: std::sync::atomic::AtomicU64,
}

impl Default for Hasher {
    fn default() -> Self {
        let (jobs, queue) = sync_channel::<Job>(MAX_WAITING);
        let spawned = std::thread::Builder::new()
            .name("vivachat-argon2".into())
            .spawn(move || {
                while let Ok(job) = queue.recv() {
                    job();
                }
            });
        // Without the thread every job is refused as busy: claims fail, chat does not.
        drop(spawned);
        Hasher {
            jobs,
            runs: Default::default(),
        }
    }
}

impl Hasher {
    /// Runs `work` on the Argon2 thread; 503 when too many wait already.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Refused> {
        self.runs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(work());
        });
        match self.jobs.try_send(job) {
            Ok(()) => rx.await.map_err(|_| Refused::busy()),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => Err(Refused::busy()),
        }
    }
}

/// Checks waiting for Argon2: by token digest (so the same token is checked
/// once), with counts per name and per address.
#[derive(Default)]
struct InFlight {
    checks: HashMap<Digest, watch::Receiver<Option<bool>>>,
    per_name: HashMap<UserId, usize>,
    per_address: HashMap<IpAddr, usize>,
}

/// Releases an in-flight check's slots however the check ends.
struct Slot<'g> {
    gate: &'g Gate,
    digest: Digest,
    user: UserId,
    address: IpAddr,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut f = self.gate.in_flight();
        f.checks.remove(&self.digest);
        decrement(&mut f.per_name, &self.user);
        decrement(&mut f.per_address, &self.address);
    }
}

/// One fewer for `key`; a count of zero is removed, so the maps stay small.
fn decrement<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, usize>, key: &K) {
    if let Some(n) = counts.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            counts.remove(key);
        }
    }
}

/// The claims table, what is known of verified tokens, and the hasher.
pub struct Gate {
    pub claims: Mutex<Claims>,
    hasher: Hasher,
    /// Durable mode: a claim is on disk before its connection is admitted.
    store: Option<Arc<Store>>,
    /// The key of this process's token digests.
    key: [u8; 32],
    /// user -> the digest of their token, once it has been verified (or claimed) here.
    verified: Mutex<HashMap<UserId, Digest>>,
    in_flight: Mutex<InFlight>,
    /// Cluster mode: the claims are a HASH in Redis (`claims`: name -> hash),
    /// so a name claimed through one node is claimed on every node.
    cluster: Option<Arc<crate::cluster::Link>>,
    /// Cluster mode: until then, Redis is being given back the claims it
    /// lost, and a name this node does not know as claimed is not admitted.
    reconciling_until: Mutex<Option<std::time::Instant>>,
}

impl Default for Gate {
    fn default() -> Self {
        Gate::new(None, Vec::new())
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
            key: digest_key(),
            verified: Mutex::default(),
            in_flight: Mutex::default(),
            cluster: None,
            reconciling_until: Mutex::new(None),
        }
    }

    /// Cluster mode: Redis lost its data (it restarted without persistence,
    /// or was flushed). Puts back every claim this node knows (HSETNX: a
    /// claim another node put back first wins, and this node learns it), and
    /// admits no name it does not know as claimed for `window`, while the
    /// other nodes do the same. Returns how many it put back, and the names
    /// whose claim in Redis is another token's (Redis's stands).
    pub fn reconcile(
        &self,
        link: &crate::cluster::Link,
        window: std::time::Duration,
    ) -> (usize, Vec<UserId>) {
        *self
            .reconciling_until
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(std::time::Instant::now() + window);
        let mine = self.claims().all();
        if mine.is_empty() {
            return (0, Vec::new());
        }
        let key = link.key("claims");
        // One round trip for every claim: HSETNX then HGET of each.
        let mut pipe = redis::pipe();
        for (user, hash) in &mine {
            pipe.cmd("HSETNX")
                .arg(&key)
                .arg(user.as_str())
                .arg(hash.as_phc());
            pipe.cmd("HGET").arg(&key).arg(user.as_str());
        }
        let answers: Vec<redis::Value> =
            match link.run("HSETNX + HGET (claims)", "O(n)", |c| pipe.query(c)) {
                Ok(answers) => answers,
                Err(_) => return (0, Vec::new()),
            };
        let (mut put_back, mut differ) = (0, Vec::new());
        for ((user, hash), pair) in mine.into_iter().zip(answers.chunks(2)) {
            let [won, winner] = pair else { continue };
            let won = redis::from_redis_value::<bool>(won.clone()).unwrap_or(false);
            let winner = redis::from_redis_value::<String>(winner.clone()).unwrap_or_default();
            if won {
                put_back += 1;
            } else if winner != hash.as_phc() {
                differ.push(user);
            }
        }
        (put_back, differ)
    }

    /// While claims are being put back: who may not be admitted yet.
    fn reconciling(&self, user: &UserId) -> Option<Refused> {
        let until = *self
            .reconciling_until
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let busy = until.is_some_and(|t| std::time::Instant::now() < t);
        (busy && !self.claims().is_claimed(user)).then(Refused::lost_claims)
    }

    /// Is `user` claimed, anywhere in the cluster? (`/names/{user}`)
    pub async fn is_claimed_anywhere(&self, user: &UserId) -> bool {
        let _ = self.learn_claim(user).await;
        self.is_claimed(user)
    }

    /// The same gate, keeping its claims in the cluster's Redis.
    pub fn in_cluster(mut self, link: Option<Arc<crate::cluster::Link>>) -> Gate {
        self.cluster = link;
        self
    }

    /// Cluster mode: learns `user`'s claim from Redis (HGET, O(1)), in case
    /// it was made through another node. A claim never changes once made,
    /// so what is learned stays true. In the same round trip, this node's
    /// marker (see `relay::beat`): if Redis lost its data, "not claimed" is
    /// not known to be true, and the name is not admitted (a refusal). The
    /// round trip runs on tokio's blocking pool, never on a worker.
    async fn learn_claim(&self, user: &UserId) -> Option<Refused> {
        let link = self.cluster.clone()?;
        if self.claims().is_claimed(user) {
            return None;
        }
        let (key, field) = (link.key("claims"), user.to_string());
        let marker = link.key(&format!("marker:{}", link.node()));
        let found = tokio::task::spawn_blocking(move || {
            link.run("HGET + EXISTS", "O(1)", |c| {
                redis::pipe()
                    .cmd("HGET")
                    .arg(&key)
                    .arg(&field)
                    .cmd("EXISTS")
                    .arg(&marker)
                    .query::<(Option<String>, bool)>(c)
            })
        })
        .await;
        match found {
            Ok(Ok((Some(phc), _))) => {
                let _ = self.claims().claim(user, TokenHash::new(phc));
                None
            }
            Ok(Ok((None, false))) => Some(Refused::lost_claims()),
            Ok(Ok((None, true))) => None,
            // Whether the name is claimed cannot be known: not admitted.
            Ok(Err(why)) => Some(Refused {
                status: StatusCode::SERVICE_UNAVAILABLE,
                reason: format!(
                    "cannot check whether {user} is claimed ({why}); try again in a moment"
                ),
            }),
            Err(_) => Some(Refused::busy()),
        }
    }

    /// Cluster mode: claims `user` in Redis first (HSETNX: exactly one node's
    /// claim wins a race); Err(winner) when another token won. On tokio's
    /// blocking pool, as `learn_claim`.
    async fn claim_in_cluster(
        &self,
        user: &UserId,
        hash: &TokenHash,
    ) -> Result<Result<(), TokenHash>, Refused> {
        let Some(link) = self.cluster.clone() else {
            return Ok(Ok(()));
        };
        let (key, field, phc) = (
            link.key("claims"),
            user.to_string(),
            hash.as_phc().to_string(),
        );
        let outcome = tokio::task::spawn_blocking(move || {
            link.run("HSETNX + HGET", "O(1)", |c| {
                let won: bool = redis::cmd("HSETNX")
                    .arg(&key)
                    .arg(&field)
                    .arg(&phc)
                    .query(c)?;
                let winner: String = redis::cmd("HGET").arg(&key).arg(&field).query(c)?;
                Ok((won, winner))
            })
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        match outcome {
            Ok((true, _)) => Ok(Ok(())),
            Ok((false, winner)) => Ok(Err(TokenHash::new(winner))),
            Err(why) => Err(Refused {
                status: StatusCode::SERVICE_UNAVAILABLE,
                reason: format!("{why}; try again in a moment"),
            }),
        }
    }

    fn claims(&self) -> std::sync::MutexGuard<'_, Claims> {
        self.claims.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn in_flight(&self) -> std::sync::MutexGuard<'_, InFlight> {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn known(&self, user: &UserId) -> Option<Digest> {
        self.verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(user)
            .copied()
    }

    fn remember(&self, user: &UserId, d: Digest) {
        self.verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(user.clone(), d);
    }

    pub fn is_claimed(&self, user: &UserId) -> bool {
        self.claims().is_claimed(user)
    }

    pub fn claimed_names(&self) -> Vec<UserId> {
        self.claims().names()
    }

    /// Argon2 hashes and checks asked for since the server started.
    pub fn slow_token_checks(&self) -> u64 {
        self.hasher.runs.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Admits or refuses a connection for `user` from `address` that brought `token`.
    pub async fn admit(
        &self,
        user: &UserId,
        token: Option<&str>,
        address: IpAddr,
    ) -> Result<Admitted, Refused> {
        let token = token.filter(|t| !t.is_empty());
        if let Some(t) = token {
            if t.len() > MAX_TOKEN_BYTES {
                return Err(Refused {
                    status: StatusCode::BAD_REQUEST,
                    reason: format!("token is over {MAX_TOKEN_BYTES} bytes"),
                });
            }
        }
        let unknown = self.learn_claim(user).await;
        if let Some(refused) = unknown.or_else(|| self.reconciling(user)) {
            return Err(refused);
        }
        let check = self.claims().check(user, token);
        let wrong = || {
            Refused::unauthorized(format!(
                "the name {user} is claimed and this token does not match it; \
                 connect with the token it was claimed with (vivachat client --token), or choose another name"
            ))
        };
        let admitted = |claimed_now| Admitted {
            authenticated: true,
            claimed_now,
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
                if self.verify(user, t, hash, address).await? {
                    Ok(admitted(false))
                } else {
                    Err(wrong())
                }
            }
            (Check::Claim, Some(t)) => {
                let owned = t.to_string();
                let hash = self.hasher.run(move || crate::tokens::hash(&owned)).await?;
                let claimed = match self.claim_in_cluster(user, &hash).await? {
                    Ok(()) => self.claims().claim(user, hash.clone()),
                    Err(winner) => {
                        let _ = self.claims().claim(user, winner.clone());
                        Err(winner)
                    }
                };
                match claimed {
                    Ok(()) => {
                        self.remember(user, digest(&self.key, user.as_str(), t));
                        self.persist(user, &hash).await?;
                        Ok(admitted(true))
                    }
                    // Someone else claimed it while this token was hashing.
                    Err(winner) => {
                        if self.verify(user, t, winner, address).await? {
                            Ok(admitted(false))
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

    /// Does `token` match `user`'s claim? From the remembered digest when this
    /// process has verified the token before (O(1), no Argon2; a different
    /// token is then certainly wrong), else by Argon2, once per token however
    /// many connections bring it at the same time.
    async fn verify(
        &self,
        user: &UserId,
        token: &str,
        hash: TokenHash,
        address: IpAddr,
    ) -> Result<bool, Refused> {
        let d = digest(&self.key, user.as_str(), token);
        if let Some(known) = self.known(user) {
            return Ok(same_digest(&known, &d));
        }
        let (slot, result) = {
            let mut f = self.in_flight();
            if let Some(same) = f.checks.get(&d) {
                // This very token is being checked already: wait for that answer.
                (None, same.clone())
            } else {
                if f.per_name.get(user).copied().unwrap_or(0) >= PER_NAME {
                    return Err(Refused::slow_down(format!(
                        "{PER_NAME} other tokens for {user} are being checked; try again in a few seconds"
                    )));
                }
                if f.per_address.get(&address).copied().unwrap_or(0) >= PER_ADDRESS {
                    return Err(Refused::slow_down(format!(
                        "{address} has {PER_ADDRESS} token checks waiting; try again in a few seconds"
                    )));
                }
                let (tx, rx) = watch::channel(None);
                f.checks.insert(d, rx.clone());
                *f.per_name.entry(user.clone()).or_default() += 1;
                *f.per_address.entry(address).or_default() += 1;
                let slot = Slot {
                    gate: self,
                    digest: d,
                    user: user.clone(),
                    address,
                };
                (Some((slot, tx)), rx)
            }
        };
        let Some((slot, tx)) = slot else {
            let mut result = result;
            let answer = result
                .wait_for(Option::is_some)
                .await
                .map_err(|_| Refused::busy())?;
            return Ok(answer.unwrap_or(false));
        };
        let owned = token.to_string();
        let matched = self
            .hasher
            .run(move || crate::tokens::verify(&owned, &hash))
            .await;
        if let Ok(true) = matched {
            self.remember(user, d);
        }
        // Waiters on this token get the answer, then the name's and the
        // address's places are freed.
        let _ = tx.send(matched.as_ref().ok().copied());
        drop(slot);
        matched
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::Name;

    fn bob() -> UserId {
        Name::parse("bob").unwrap()
    }

    fn ip() -> IpAddr {
        "127.0.0.1".parse().unwrap()
    }

    #[tokio::test]
    async fn open_until_claimed_then_only_the_token() {
        let gate = Gate::default();
        let open = gate.admit(&bob(), None, ip()).await.unwrap();
        assert!(!open.authenticated);
        // An empty token is no token.
        assert!(
            !gate
                .admit(&bob(), Some(""), ip())
                .await
                .unwrap()
                .authenticated
        );
        assert!(!gate.is_claimed(&bob()));

        let first = gate.admit(&bob(), Some("secret"), ip()).await.unwrap();
        assert_eq!(
            first,
            Admitted {
                authenticated: true,
                claimed_now: true
            }
        );
        let again = gate.admit(&bob(), Some("secret"), ip()).await.unwrap();
        assert_eq!(
            again,
            Admitted {
                authenticated: true,
                claimed_now: false
            }
        );
        for token in [None, Some(""), Some("Secret"), Some("secret ")] {
            let refused = gate.admit(&bob(), token, ip()).await.unwrap_err();
            assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{token:?}");
            assert!(refused.reason.contains("claimed"), "{}", refused.reason);
        }
        assert_eq!(gate.claimed_names(), vec![bob()]);
    }

    #[tokio::test]
    async fn an_oversized_token_is_refused_before_any_hashing() {
        let gate = Gate::default();
        let long = "x".repeat(MAX_TOKEN_BYTES + 1);
        let refused = gate.admit(&bob(), Some(&long), ip()).await.unwrap_err();
        assert_eq!(refused.status, StatusCode::BAD_REQUEST);
        assert!(!gate.is_claimed(&bob()));
    }

    #[tokio::test]
    async fn a_token_verified_once_is_checked_without_argon2_and_so_is_a_wrong_one() {
        let gate = Gate::default();
        gate.admit(&bob(), Some("secret"), ip()).await.unwrap();
        let after_claim = gate.slow_token_checks();
        assert_eq!(after_claim, 1, "the claim hashed once");
        for i in 0..200 {
            let token = if i % 2 == 0 {
                "secret".to_string()
            } else {
                format!("guess{i}")
            };
            let answer = gate.admit(&bob(), Some(&token), ip()).await;
            assert_eq!(answer.is_ok(), i % 2 == 0, "{token}");
        }
        assert_eq!(
            gate.slow_token_checks(),
            after_claim,
            "no Argon2 for any of them"
        );
    }

    /// After a restart (claims loaded from disk, nothing verified yet): the
    /// same token from eight devices at once is checked once; different wrong
    /// tokens for one name wait at most PER_NAME at a time, the rest get 429.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cold_checks_are_shared_per_token_and_bounded_per_name() {
        let hash = crate::tokens::hash("right");
        let gate = Arc::new(Gate::new(None, vec![(bob(), hash)]));
        let same: Vec<_> = (0..8)
            .map(|_| {
                let gate = gate.clone();
                tokio::spawn(async move { gate.admit(&bob(), Some("right"), ip()).await })
            })
            .collect();
        for t in same {
            assert!(t.await.unwrap().is_ok());
        }
        assert_eq!(gate.slow_token_checks(), 1, "eight devices, one check");

        let gate = Arc::new(Gate::new(None, vec![(bob(), crate::tokens::hash("right"))]));
        let guesses: Vec<_> = (0..20)
            .map(|i| {
                let gate = gate.clone();
                let address: IpAddr = format!("10.0.0.{i}").parse().unwrap();
                tokio::spawn(async move {
                    gate.admit(&bob(), Some(&format!("guess{i}")), address)
                        .await
                })
            })
            .collect();
        let mut statuses = Vec::new();
        for t in guesses {
            statuses.push(t.await.unwrap().unwrap_err().status);
        }
        let slowed = statuses
            .iter()
            .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
            .count();
        assert!(slowed >= 20 - 2 * PER_NAME, "{statuses:?}");
        assert!(statuses
            .iter()
            .all(|s| *s == StatusCode::TOO_MANY_REQUESTS || *s == StatusCode::UNAUTHORIZED));
        assert!(
            gate.slow_token_checks() < 20,
            "{} runs",
            gate.slow_token_checks()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_address_may_not_fill_the_queue() {
        let claims: Vec<_> = (0..40)
            .map(|i| {
                (
                    Name::parse(&format!("u{i}")).unwrap(),
                    crate::tokens::hash("right"),
                )
            })
            .collect();
        let gate = Arc::new(Gate::new(None, claims));
        let tries: Vec<_> = (0..40)
            .map(|i| {
                let gate = gate.clone();
                tokio::spawn(async move {
                    let user = Name::parse(&format!("u{i}")).unwrap();
                    gate.admit(&user, Some("wrong"), ip()).await
                })
            })
            .collect();
        let mut slowed = 0;
        for t in tries {
            if t.await.unwrap().unwrap_err().status == StatusCode::TOO_MANY_REQUESTS {
                slowed += 1;
            }
        }
        assert!(slowed >= 40 - 2 * PER_ADDRESS, "{slowed}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn racing_first_claims_leave_exactly_one_owner() {
        let gate = std::sync::Arc::new(Gate::default());
        let tries: Vec<_> = (0..4)
            .map(|i| {
                let gate = gate.clone();
                tokio::spawn(async move { gate.admit(&bob(), Some(&format!("t{i}")), ip()).await })
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
