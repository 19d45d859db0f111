//! Bodies generated while they are sent: as large or as slow as a test needs, in constant memory.

use std::{convert::Infallible, time::Duration};

use axum::body::{Body, Bytes};

/// `total` bytes of spaces, `chunk` bytes per frame; after the first frame, one every `interval`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Streamed {
    pub total: u64,
    pub chunk: usize,
    pub interval: Duration,
}

impl Streamed {
    /// A streaming body without a known length. Only one chunk is ever allocated; every frame
    /// shares it.
    pub fn into_body(self) -> Body {
        let piece = Bytes::from(vec![b' '; self.chunk.max(1)]);
        let frames = futures::stream::unfold((self.total, true), move |(left, first)| {
            let piece = piece.clone();
            async move {
                if left == 0 {
                    return None;
                }
                if !first && !self.interval.is_zero() {
                    tokio::time::sleep(self.interval).await;
                }
                let len = piece.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                Some((Ok::<_, Infallible>(piece.slice(..len)), (left - len as u64, false)))
            }
        });
        Body::from_stream(frames)
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt as _;
    use tokio::time::Instant;

    use super::*;

    #[tokio::test]
    async fn a_huge_body_is_sent_in_bounded_chunks_to_the_last_byte() {
        let total = 10 * 1024 * 1024 + 3;
        let mut frames = Streamed { total, chunk: 64 * 1024, interval: Duration::ZERO }.into_body().into_data_stream();
        let (mut sent, mut largest) = (0u64, 0usize);
        while let Some(frame) = frames.next().await {
            let frame = frame.unwrap();
            largest = largest.max(frame.len());
            sent += frame.len() as u64;
        }
        assert_eq!((sent, largest), (total, 64 * 1024));
    }

    #[tokio::test(start_paused = true)]
    async fn a_drip_sends_one_chunk_per_interval_and_never_ends() {
        let interval = Duration::from_secs(2);
        let mut frames = Streamed { total: u64::MAX, chunk: 8, interval }.into_body().into_data_stream();
        let start = Instant::now();
        for n in 0..5u32 {
            assert_eq!(frames.next().await.unwrap().unwrap().len(), 8);
            assert_eq!(start.elapsed(), interval * n, "frame {n}");
        }
    }
}
