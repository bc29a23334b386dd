//! Idempotency records in the memory engine: claims and completed responses with their
//! expiry, swept as they expire.
//!
//! It never stores a completed response on its own: `orders.rs` remembers it in the same
//! locked step as the effect it describes ([`State::remember`]).

use super::{MemoryEngine, State};
use crate::engine::{EngineResult, IdempotencyBegin, IdempotencyStore, IdempotentResponse};
use async_trait::async_trait;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Clone)]
pub(super) enum IdempotencyRecord {
    InFlight { fingerprint: String },
    Done(IdempotentResponse),
}

impl State {
    pub(super) fn remember(&mut self, response: &IdempotentResponse) {
        let expires = Instant::now() + response.ttl;
        self.idempotency.insert(
            response.key.clone(),
            (IdempotencyRecord::Done(response.clone()), expires),
        );
        self.idempotency_expiry
            .push_back((expires, response.key.clone()));
    }

    fn sweep_idempotency(&mut self, now: Instant) {
        while let Some((expires, _)) = self.idempotency_expiry.front() {
            if *expires > now {
                break;
            }
            if let Some((_, key)) = self.idempotency_expiry.pop_front()
                && self
                    .idempotency
                    .get(&key)
                    .is_some_and(|(_, until)| *until <= now)
            {
                self.idempotency.remove(&key);
            }
        }
    }
}

#[async_trait]
impl IdempotencyStore for MemoryEngine {
    async fn begin_idempotent(
        &self,
        key: &str,
        _order_id: Option<&str>,
        fingerprint: &str,
        in_flight_ttl: Duration,
    ) -> EngineResult<IdempotencyBegin> {
        let now = Instant::now();
        self.with_state(|state| {
            state.sweep_idempotency(now);
            if let Some((record, until)) = state.idempotency.get(key)
                && *until > now
            {
                return match record {
                    IdempotencyRecord::InFlight { fingerprint } => IdempotencyBegin::InFlight {
                        fingerprint: fingerprint.clone(),
                    },
                    IdempotencyRecord::Done(response) => {
                        IdempotencyBegin::Completed(response.clone())
                    }
                };
            }
            let expires = now + in_flight_ttl;
            state.idempotency.insert(
                key.to_string(),
                (
                    IdempotencyRecord::InFlight {
                        fingerprint: fingerprint.to_string(),
                    },
                    expires,
                ),
            );
            state
                .idempotency_expiry
                .push_back((expires, key.to_string()));
            IdempotencyBegin::Started {
                claim: String::new(),
            }
        })
    }

    async fn abandon_idempotent(&self, key: &str) -> EngineResult<()> {
        self.with_state(|state| {
            if matches!(
                state.idempotency.get(key),
                Some((IdempotencyRecord::InFlight { .. }, _))
            ) {
                state.idempotency.remove(key);
            }
        })
    }
}
