//! A request budget per broker account: a token bucket for the configured rate, and a block that
//! a 429 sets for every caller of the account until the broker's reset time.

use std::time::Duration;

use tokio::{sync::Mutex, time::Instant};

use crate::upstream::MAX_SERVER_DELAY;

#[derive(Debug)]
pub struct RequestBudget {
    state: Mutex<State>,
    per_request: Duration,
    burst: f64,
}

#[derive(Debug)]
struct State {
    tokens: f64,
    refilled: Instant,
    blocked_until: Option<Instant>,
}

/// The account is blocked after a 429; no request may go out before `until`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blocked {
    pub remaining: Duration,
}

impl RequestBudget {
    /// `requests_per_second` sustained, `burst` at once. `None` means unlimited (but the 429 block
    /// still applies).
    pub fn new(rate: Option<(u32, u32)>) -> Self {
        let (per_request, burst) = match rate {
            Some((rps, burst)) => (Duration::from_secs_f64(1.0 / f64::from(rps.max(1))), f64::from(burst.max(1))),
            None => (Duration::ZERO, f64::MAX),
        };
        Self { state: Mutex::new(State { tokens: burst, refilled: Instant::now(), blocked_until: None }), per_request, burst }
    }

    /// Waits for a token. Fails at once while the account is blocked by a 429.
    pub async fn acquire(&self) -> Result<(), Blocked> {
        loop {
            let wait = {
                let mut state = self.state.lock().await;
                let now = Instant::now();
                if let Some(until) = state.blocked_until {
                    if until > now {
                        return Err(Blocked { remaining: until - now });
                    }
                    state.blocked_until = None;
                }
                if self.per_request.is_zero() {
                    return Ok(());
                }
                let refill = (now - state.refilled).as_secs_f64() / self.per_request.as_secs_f64();
                state.tokens = (state.tokens + refill).min(self.burst);
                state.refilled = now;
                if state.tokens >= 1.0 {
                    state.tokens -= 1.0;
                    return Ok(());
                }
                self.per_request.mul_f64(1.0 - state.tokens)
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// Records a 429: nobody calls the account again for `wait`. Callers pass the clamped
    /// [`retry_after`](crate::upstream::retry_after); a wait the clock cannot represent still
    /// blocks, for [`MAX_SERVER_DELAY`] instead of panicking.
    pub async fn block_for(&self, wait: Duration) {
        let mut state = self.state.lock().await;
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
        let budget = RequestBudget::new(Some((2, 2)));
        let start = Instant::now();
        for _ in 0..6 {
            budget.acquire().await.unwrap();
        }
        // 2 at once, then 4 more at 2 per second.
        assert_eq!((Instant::now() - start).as_millis(), 2000);
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
        let budget = RequestBudget::new(Some((10, 10)));
        budget.block_for(Duration::MAX).await;
        let blocked = budget.acquire().await.unwrap_err();
        assert_eq!(blocked.remaining, MAX_SERVER_DELAY);
        tokio::time::advance(MAX_SERVER_DELAY).await;
        assert!(budget.acquire().await.is_ok(), "the block ends like a clamped one");
    }
}
