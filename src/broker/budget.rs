//! A request budget per broker account: a token bucket for the configured rate, and a block that
//! a 429 sets for every caller of the account until the broker's reset time. One budget is shared
//! by every client of the account (see [`super::BrokerRegistry`]), so it outlives spec edits and
//! is counted once however many brokers use the account.

use std::{sync::Mutex, time::Duration};

use tokio::time::Instant;

use crate::upstream::MAX_SERVER_DELAY;

/// A sustained rate (one request every `per_request`) and the requests that may go at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_request: Duration,
    pub burst: u32,
}

impl Rate {
    /// `requests_per_second` sustained (at least 1), `burst` at once (at least 1), as a broker's
    /// `rateLimit` says.
    pub fn per_second(requests_per_second: u32, burst: u32) -> Self {
        Self { per_request: Duration::from_secs(1) / requests_per_second.max(1), burst: burst.max(1) }
    }

    /// `requests_per_minute` sustained (at least 1), `burst` at once (at least 1).
    pub const fn per_minute(requests_per_minute: u32, burst: u32) -> Self {
        let requests = if requests_per_minute == 0 { 1 } else { requests_per_minute };
        Self { per_request: Duration::from_millis(60_000 / requests as u64), burst: if burst == 0 { 1 } else { burst } }
    }
}

impl From<(u32, u32)> for Rate {
    /// `(requests per second, burst)`, as a broker's `rateLimit` holds them.
    fn from((requests_per_second, burst): (u32, u32)) -> Self {
        Self::per_second(requests_per_second, burst)
    }
}

#[derive(Debug)]
pub struct RequestBudget {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// `None`: unlimited (the 429 block still applies).
    rate: Option<Rate>,
    tokens: f64,
    refilled: Instant,
    blocked_until: Option<Instant>,
}

impl State {
    /// Adds the tokens earned since the last refill.
    fn refill(&mut self, now: Instant) {
        if let Some(rate) = self.rate {
            let earned = (now - self.refilled).as_secs_f64() / rate.per_request.as_secs_f64();
            self.tokens = (self.tokens + earned).min(f64::from(rate.burst));
        }
        self.refilled = now;
    }
}

/// The account is blocked after a 429; no request may go out before `until`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blocked {
    pub remaining: Duration,
}

impl RequestBudget {
    /// A full bucket at `rate`; `None` means unlimited (but the 429 block still applies).
    pub fn new(rate: Option<Rate>) -> Self {
        let tokens = rate.map_or(f64::MAX, |r| f64::from(r.burst));
        Self { state: Mutex::new(State { rate, tokens, refilled: Instant::now(), blocked_until: None }) }
    }

    /// The configured rate.
    pub fn rate(&self) -> Option<Rate> {
        self.lock().rate
    }

    /// Applies a new rate from now on, keeping what was spent and any 429 block: an edited
    /// `rateLimit` changes the pace, it does not refill the bucket.
    pub fn set_rate(&self, rate: Option<Rate>) {
        let mut state = self.lock();
        if state.rate == rate {
            return;
        }
        state.refill(Instant::now());
        state.rate = rate;
        state.tokens = match rate {
            Some(rate) => state.tokens.min(f64::from(rate.burst)),
            None => f64::MAX,
        };
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a few numbers, consistent after every statement: a panic elsewhere
        // cannot leave it half-written.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits for a token. Fails at once while the account is blocked by a 429.
    pub async fn acquire(&self) -> Result<(), Blocked> {
        loop {
            let wait = {
                let mut state = self.lock();
                let now = Instant::now();
                if let Some(until) = state.blocked_until {
                    if until > now {
                        return Err(Blocked { remaining: until - now });
                    }
                    state.blocked_until = None;
                }
                let Some(rate) = state.rate else {
                    return Ok(());
                };
                state.refill(now);
                if state.tokens >= 1.0 {
                    state.tokens -= 1.0;
                    return Ok(());
                }
                rate.per_request.mul_f64(1.0 - state.tokens)
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// Records a 429: nobody calls the account again for `wait`. Callers pass the clamped
    /// [`retry_after`](crate::upstream::retry_after); a wait the clock cannot represent still
    /// blocks, for [`MAX_SERVER_DELAY`] instead of panicking.
    pub async fn block_for(&self, wait: Duration) {
        let mut state = self.lock();
        let now = Instant::now();
        let until = now.checked_add(wait).unwrap_or(now + MAX_SERVER_DELAY);
        state.blocked_until = Some(state.blocked_until.map_or(until, |u| u.max(until)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn bucket_paces_after_the_burst() {
        let budget = RequestBudget::new(Some(Rate::per_second(2, 2)));
        let start = Instant::now();
        for _ in 0..6 {
            budget.acquire().await.unwrap();
        }
        // 2 at once, then 4 more at 2 per second.
        assert_eq!((Instant::now() - start).as_millis(), 2000);
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_rate_keeps_what_was_spent_and_the_block() {
        let budget = RequestBudget::new(Some(Rate::per_second(1, 3)));
        for _ in 0..3 {
            budget.acquire().await.unwrap();
        }
        budget.block_for(Duration::from_secs(5)).await;
        budget.set_rate(Some(Rate::per_second(1, 10)));
        assert_eq!(budget.acquire().await.unwrap_err().remaining, Duration::from_secs(5), "the block survives");
        tokio::time::advance(Duration::from_secs(5)).await;
        // Five seconds earned five tokens, not a fresh bucket of ten.
        let start = Instant::now();
        for _ in 0..6 {
            budget.acquire().await.unwrap();
        }
        assert_eq!((Instant::now() - start).as_secs(), 1);
    }

    #[test]
    fn rates() {
        assert_eq!(Rate::per_minute(40, 5), Rate { per_request: Duration::from_millis(1500), burst: 5 });
        assert_eq!(Rate::from((4, 0)), Rate { per_request: Duration::from_millis(250), burst: 1 });
        assert_eq!(Rate::per_second(0, 2).per_request, Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_block_refuses_until_it_ends() {
        let budget = RequestBudget::new(None);
        budget.block_for(Duration::from_secs(30)).await;
        let blocked = budget.acquire().await.unwrap_err();
        assert_eq!(blocked.remaining, Duration::from_secs(30));
        tokio::time::advance(Duration::from_secs(31)).await;
        assert!(budget.acquire().await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_block_past_the_end_of_time_refuses_without_panicking() {
        let budget = RequestBudget::new(Some(Rate::per_second(10, 10)));
        budget.block_for(Duration::MAX).await;
        let blocked = budget.acquire().await.unwrap_err();
        assert_eq!(blocked.remaining, MAX_SERVER_DELAY);
        tokio::time::advance(MAX_SERVER_DELAY).await;
        assert!(budget.acquire().await.is_ok(), "the block ends like a clamped one");
    }
}
