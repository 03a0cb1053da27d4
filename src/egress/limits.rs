//! Per-grant limits: a grant's `rate` (`"60/min"`) and `daily` budget, counted for each
//! (tenant, user, grant) and checked right after the decision is Allow, before the request is
//! cleaned and before any credential is resolved.
//!
//! # Algorithm
//!
//! `rate = "N/period"` is a token bucket of capacity N refilled at N per period, computed as
//! GCRA (the generic cell rate algorithm): each key keeps one instant, its *theoretical arrival
//! time* (TAT). A request is admitted when `max(TAT, now) + period/N` is no more than one
//! period ahead of now, and then moves TAT there. A fresh or idle user may therefore send a
//! burst of N at once, then one every `period/N`; a refusal knows exactly when the next
//! request would pass, which becomes `Retry-After`. Refused requests take nothing.
//!
//! `daily = D` counts admitted requests per UTC day (days since the Unix epoch, from the
//! wall clock) and resets at UTC midnight; once D are spent, requests are refused until then.
//! When a grant has both, a request must pass both, and is counted by both only if it does.
//!
//! # Memory
//!
//! Keys live in [`SHARDS`] mutex-guarded maps. An entry is *idle* once its bucket is full again
//! (TAT not after now) and it holds no spent daily budget for the current day: dropping it
//! then loses nothing, since a new entry would behave the same. Each shard drops its idle
//! entries every [`SWEEP_EVERY`] new keys, and when a new key finds it full (again after an
//! eighth of its share of new keys, or a second, so the scan's cost is spread). The total is
//! capped at [`MAX_KEYS`], a 1/[`SHARDS`] share per shard. If a shard is still full of busy
//! entries after a sweep, a request for a *new* key is refused with 429 (`Retry-After: 1`)
//! and a warning is logged, while users already tracked keep their buckets. Failing closed
//! keeps a flood of identities from resetting anyone's budget, which evicting a busy entry
//! would do (its user would get a fresh one).

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use super::EgressError;
use crate::policy::Grant;
use crate::policy::tenant::Rate;
use crate::principal::Principal;

/// The most (tenant, user, grant) keys tracked at once, over all shards. An entry takes about
/// 100 bytes plus the three ids (at most 128 bytes each), so the cap bounds the limiter to
/// tens of MiB.
pub const MAX_KEYS: usize = 100_000;

/// How many independently locked maps the keys are spread over.
pub const SHARDS: usize = 16;

/// A shard drops its idle entries after this many new keys.
pub const SWEEP_EVERY: usize = 256;

/// How often the "limiter full" warning may be logged, per shard.
const WARN_INTERVAL: Duration = Duration::from_secs(10);

const SECONDS_PER_DAY: u64 = 86_400;

/// Counts requests per (tenant, user, grant) against each grant's `rate` and `daily`. Lives in
/// [`super::Egress`]; no globals.
pub struct Limiter {
    shards: Box<[Mutex<Shard>]>,
    hasher: std::hash::RandomState,
    shard_cap: usize,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("keys", &self.len())
            .field("max_keys", &self.max_keys())
            .finish()
    }
}

impl Default for Limiter {
    fn default() -> Self {
        Self::new()
    }
}

/// Why a request was not admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The grant's `rate` is spent for now.
    Rate {
        /// The grant's rate.
        rate: Rate,
        /// Whole seconds until one request would pass (at least 1).
        retry_after: u64,
    },
    /// The grant's `daily` budget is spent until UTC midnight.
    Daily {
        /// The budget.
        budget: u32,
        /// Whole seconds until UTC midnight (at least 1).
        retry_after: u64,
    },
    /// The limiter is tracking [`MAX_KEYS`] busy keys and cannot take another.
    Full {
        /// Whole seconds until the next sweep may free room.
        retry_after: u64,
    },
}

impl Refusal {
    /// Whole seconds until a retry can succeed (at least 1).
    pub fn retry_after(&self) -> u64 {
        match self {
            Self::Rate { retry_after, .. }
            | Self::Daily { retry_after, .. }
            | Self::Full { retry_after } => *retry_after,
        }
    }

    /// The pipeline error for a refusal under `grant`: no secret, just which limit.
    pub fn into_error(self, grant: &Grant) -> EgressError {
        let id = &grant.id;
        let message = match &self {
            Self::Rate { rate, .. } => format!(
                "grant `{id}` allows each user {} request(s) per {} (rate = \"{rate}\"); this \
                 user has used them",
                rate.count(),
                per(rate.period())
            ),
            Self::Daily { budget, .. } => format!(
                "grant `{id}` allows each user {budget} request(s) per UTC day (daily = \
                 {budget}); this user has used them"
            ),
            Self::Full { .. } => format!(
                "grant `{id}` is rate limited, and behalf is tracking as many users as it can \
                 ({MAX_KEYS}); try again shortly"
            ),
        };
        EgressError::RateLimited {
            message,
            retry_after: self.retry_after(),
        }
    }
}

fn per(period: Duration) -> &'static str {
    match period.as_secs() {
        1 => "second",
        60 => "minute",
        _ => "hour",
    }
}

/// A key's state.
#[derive(Debug, Clone, Copy)]
struct Slot {
    /// GCRA's theoretical arrival time; the bucket is full when this is not after now.
    tat: Instant,
    /// The UTC day (days since the Unix epoch) `used` counts requests of.
    day: u64,
    /// Requests admitted on `day` (counted only for grants with `daily`).
    used: u32,
}

impl Slot {
    fn fresh(now: Instant, today: u64) -> Self {
        Self {
            tat: now,
            day: today,
            used: 0,
        }
    }

    /// Whether dropping this entry loses nothing: the bucket is full and no daily budget of
    /// today (or of a day the wall clock has stepped back from) is spent.
    fn idle(&self, now: Instant, today: u64) -> bool {
        self.tat <= now && (self.used == 0 || self.day < today)
    }

    /// Admits one request at `now` (monotonic) and `unix_secs` (wall clock), returning the
    /// new state, or why not and for how long.
    fn admit(
        self,
        rate: Option<Rate>,
        daily: Option<u32>,
        now: Instant,
        unix_secs: u64,
    ) -> Result<Self, Refusal> {
        let mut next = self;
        let mut refused = None;
        if let Some(rate) = rate {
            let interval = rate.period() / rate.count();
            // The bucket's depth: `count` intervals (just under `period` when it does not divide).
            let depth = interval * rate.count();
            let tat = self.tat.max(now) + interval;
            let ahead = tat.duration_since(now);
            if ahead > depth {
                refused = Some(Refusal::Rate {
                    rate,
                    retry_after: whole_seconds(ahead - depth),
                });
            } else {
                next.tat = tat;
            }
        }
        if let Some(budget) = daily {
            let today = unix_secs / SECONDS_PER_DAY;
            // A wall clock stepped back keeps counting the later day rather than resetting.
            let (day, used) = if today > self.day {
                (today, 0)
            } else {
                (self.day, self.used)
            };
            if used >= budget {
                let midnight = (day + 1) * SECONDS_PER_DAY;
                refused = Some(Refusal::Daily {
                    budget,
                    retry_after: midnight.saturating_sub(unix_secs).max(1),
                });
            } else {
                next.day = day;
                next.used = used + 1;
            }
        }
        match refused {
            Some(r) => Err(r),
            None => Ok(next),
        }
    }
}

/// A duration rounded up to whole seconds, at least 1.
fn whole_seconds(d: Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

/// A (tenant, user, grant) key, length-prefixed into one allocation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key(Box<[u8]>);

impl Key {
    fn new(tenant: &str, user: &str, grant: &str) -> Self {
        let mut out = Vec::with_capacity(12 + tenant.len() + user.len() + grant.len());
        for part in [tenant, user, grant] {
            // Ids are at most 128 bytes (validated at parse time), far below u32::MAX.
            out.extend_from_slice(&(part.len() as u32).to_be_bytes());
            out.extend_from_slice(part.as_bytes());
        }
        Self(out.into_boxed_slice())
    }
}

#[derive(Debug, Default)]
struct Shard {
    slots: HashMap<Key, Slot>,
    /// Requests for new keys since the last sweep (admitted or not).
    attempts: usize,
    /// When the last sweep ran.
    swept: Option<Instant>,
    /// When the last "full" warning was logged.
    warned: Option<Instant>,
}

impl Shard {
    /// Drops idle entries.
    fn sweep(&mut self, now: Instant, today: u64) {
        self.slots.retain(|_, slot| !slot.idle(now, today));
        self.attempts = 0;
        self.swept = Some(now);
    }

    /// Makes room for one new key, sweeping when due; refuses when the shard stays full.
    fn make_room(&mut self, cap: usize, now: Instant, today: u64) -> Result<(), Refusal> {
        self.attempts += 1;
        if self.attempts >= SWEEP_EVERY {
            self.sweep(now, today);
        }
        if self.slots.len() < cap {
            return Ok(());
        }
        // Full: sweep again once enough new keys have asked to pay for the scan (an eighth of
        // the shard), or a second has passed, so a shard full of busy keys costs O(1) per
        // refused request on average.
        let due =
            self.attempts >= (cap / 8).max(1) || elapsed(self.swept, now, Duration::from_secs(1));
        if due {
            self.sweep(now, today);
            if self.slots.len() < cap {
                return Ok(());
            }
            if elapsed(self.warned, now, WARN_INTERVAL) {
                self.warned = Some(now);
                tracing::warn!(
                    max_keys = cap * SHARDS,
                    "rate limiter full of active keys: requests from users it does not track \
                     yet are refused (429) until buckets refill"
                );
            }
        }
        Err(Refusal::Full { retry_after: 1 })
    }
}

/// Whether `interval` has passed since `since` (or it never happened).
fn elapsed(since: Option<Instant>, now: Instant, interval: Duration) -> bool {
    since.is_none_or(|at| now.duration_since(at) >= interval)
}

impl Limiter {
    /// A limiter capped at [`MAX_KEYS`].
    pub fn new() -> Self {
        Self::with_max_keys(MAX_KEYS)
    }

    /// A limiter capped at `max_keys` (rounded up to a multiple of [`SHARDS`]).
    pub fn with_max_keys(max_keys: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: std::hash::RandomState::new(),
            shard_cap: max_keys.div_ceil(SHARDS).max(1),
        }
    }

    /// The cap on tracked keys.
    pub fn max_keys(&self) -> usize {
        self.shard_cap * SHARDS
    }

    /// How many keys are tracked now.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).slots.len()).sum()
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes one request from `grant`'s limits for `principal`, now.
    ///
    /// # Security
    ///
    /// The key is the verified principal the front door bound to the call and the grant the
    /// decision matched; nothing a tool or an upstream sends can choose whose budget is spent.
    pub fn take(&self, principal: &Principal, grant: &Grant) -> Result<(), EgressError> {
        if grant.rate.is_none() && grant.daily.is_none() {
            return Ok(());
        }
        let unix_secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.take_at(
            principal.tenant.as_str(),
            principal.user.as_str(),
            grant,
            Instant::now(),
            unix_secs,
        )
        .map_err(|r| r.into_error(grant))
    }

    /// [`Limiter::take`] at a given monotonic instant and wall-clock second.
    pub fn take_at(
        &self,
        tenant: &str,
        user: &str,
        grant: &Grant,
        now: Instant,
        unix_secs: u64,
    ) -> Result<(), Refusal> {
        let (rate, daily) = (grant.rate, grant.daily);
        if rate.is_none() && daily.is_none() {
            return Ok(());
        }
        let today = unix_secs / SECONDS_PER_DAY;
        let key = Key::new(tenant, user, &grant.id);
        let index = (self.hasher.hash_one(&key) % SHARDS as u64) as usize;
        let mut shard = lock(&self.shards[index]);
        if let Some(slot) = shard.slots.get_mut(&key) {
            *slot = slot.admit(rate, daily, now, unix_secs)?;
            return Ok(());
        }
        shard.make_room(self.shard_cap, now, today)?;
        let slot = Slot::fresh(now, today).admit(rate, daily, now, unix_secs)?;
        shard.slots.insert(key, slot);
        Ok(())
    }
}

/// The maps hold plain counters, consistent at every step, so a poisoned lock is still usable.
fn lock(shard: &Mutex<Shard>) -> std::sync::MutexGuard<'_, Shard> {
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests;
