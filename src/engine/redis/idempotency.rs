//! Idempotency records on Redis: `P{p0}:idem:<key>`, one JSON string with a TTL.
//!
//! It owns the claim (`SET NX PX`), the release of a claim whose reply was lost, and the
//! stored form of a completed response. It never writes a completed response itself: the
//! intake scripts (`orders.rs`) write it with the effect it describes, via [`done_record`].

use super::reply::corrupt;
use super::{RedisEngine, millis};
use crate::engine::{
    EngineError, EngineResult, IdempotencyBegin, IdempotencyStore, IdempotentResponse,
    idempotency_partition,
};
use ::redis::Value;
use async_trait::async_trait;
use std::time::Duration;

/// The stored form of an idempotency record.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(tag = "state", rename_all = "camelCase")]
enum IdemRecord {
    #[serde(rename = "inflight")]
    InFlight {
        fingerprint: String,
        /// Unique per claim, so a claim whose reply was lost can be released as that claim
        /// only ([`RELEASE_LOST_CLAIM`]).
        #[serde(default, skip_serializing_if = "String::is_empty")]
        token: String,
    },
    #[serde(rename = "done", rename_all = "camelCase")]
    Done {
        key: String,
        fingerprint: String,
        status: u16,
        body: serde_json::Value,
        /// The TTL it was stored with, so a replay hands back the response as it was given.
        #[serde(default)]
        ttl_ms: u64,
    },
}

pub(super) fn done_record(response: &IdempotentResponse) -> EngineResult<String> {
    serde_json::to_string(&IdemRecord::Done {
        key: response.key.clone(),
        fingerprint: response.fingerprint.clone(),
        status: response.status,
        body: response.body.clone(),
        ttl_ms: millis(response.ttl),
    })
    .map_err(corrupt)
}

/// Deletes an idempotency claim only if the record is still exactly that claim (its token).
const RELEASE_LOST_CLAIM: &str = include_str!("scripts/release_lost_claim.lua");

fn decode_record(key: &str, json: &str) -> EngineResult<IdemRecord> {
    serde_json::from_str(json).map_err(|e| {
        corrupt(format!(
            "idempotency record for `{key}` does not decode: {e}"
        ))
    })
}

fn completed(record: IdemRecord) -> Option<IdempotentResponse> {
    match record {
        IdemRecord::InFlight { .. } => None,
        IdemRecord::Done {
            key,
            fingerprint,
            status,
            body,
            ttl_ms,
        } => Some(IdempotentResponse {
            key,
            fingerprint,
            status,
            body,
            ttl: Duration::from_millis(ttl_ms),
            claim: String::new(),
        }),
    }
}

impl RedisEngine {
    /// The completed response for `key` written with its effect in `partition`, if any.
    async fn completed_in(
        &self,
        partition: usize,
        key: &str,
    ) -> EngineResult<Option<IdempotentResponse>> {
        let found: Option<String> = self
            .run(
                "reading an idempotency key",
                ::redis::cmd("GET").arg(self.keys.idem(partition, key)),
            )
            .await?;
        Ok(match found {
            Some(json) => completed(decode_record(key, &json)?),
            None => None,
        })
    }

    /// Puts a completed response where `key`'s claims live (partition `own`), over whatever
    /// claim is there, for the rest of its TTL: what the request's effect wrote in its order's
    /// partition, now found by the key alone.
    pub(super) async fn copy_completed(
        &self,
        own: usize,
        response: &IdempotentResponse,
    ) -> EngineResult<()> {
        let _: Value = self
            .run(
                "recording an idempotent response",
                ::redis::cmd("SET")
                    .arg(self.keys.idem(own, &response.key))
                    .arg(done_record(response)?)
                    .arg("PX")
                    .arg(millis(response.ttl)),
            )
            .await?;
        Ok(())
    }

    /// After an effect that wrote `response` in `order_id`'s partition: its copy where the
    /// key's claims live, when that is another partition. A failed copy is logged, not
    /// returned: the effect and its response are stored, and a retry finds them once the
    /// in-flight claim expires.
    pub(super) async fn complete_elsewhere(
        &self,
        order_id: &str,
        response: Option<&IdempotentResponse>,
    ) {
        let Some(response) = response else { return };
        let own = idempotency_partition(&response.key, self.keys.partitions());
        if own == self.keys.partition(order_id) {
            return;
        }
        if let Err(e) = self.copy_completed(own, response).await {
            tracing::warn!(error = %e, "could not copy an idempotent response to its key's partition; a retry finds it once the claim expires");
        }
    }

    /// A claim whose reply never came (a timeout: Redis paused or busy) may still be applied
    /// when Redis gets to it, leaving an in-flight record that no request owns: every retry
    /// with the key would be refused (409) until the record expires. So the release is sent
    /// at once, right behind the SET on the same connection (Redis runs one connection's
    /// commands in order), without waiting for its reply; it deletes only this claim, never a
    /// retry's. A plain EVAL, not EVALSHA: a restarted Redis has no scripts loaded, and the
    /// NOSCRIPT fallback would need a reply that may never come.
    fn release_lost_claim(&self, redis_key: &str, claim: &str) {
        let mut conn = self.conn.clone();
        let limit = self.op_timeout;
        let release = ::redis::cmd("EVAL")
            .arg(RELEASE_LOST_CLAIM)
            .arg(1)
            .arg(redis_key)
            .arg(claim)
            .to_owned();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(limit, release.query_async::<Value>(&mut conn)).await;
        });
    }
}

#[async_trait]
impl IdempotencyStore for RedisEngine {
    async fn begin_idempotent(
        &self,
        key: &str,
        order_id: Option<&str>,
        fingerprint: &str,
        in_flight_ttl: Duration,
    ) -> EngineResult<IdempotencyBegin> {
        let own = idempotency_partition(key, self.keys.partitions());
        let redis_key = self.keys.idem(own, key);
        let claim = serde_json::to_string(&IdemRecord::InFlight {
            fingerprint: fingerprint.to_string(),
            token: uuid::Uuid::new_v4().simple().to_string(),
        })
        .map_err(corrupt)?;
        // Two rounds: the record found by a failed SET NX may expire before the GET.
        for _ in 0..2 {
            let set: Value = match self
                .run(
                    "claiming an idempotency key",
                    ::redis::cmd("SET")
                        .arg(&redis_key)
                        .arg(&claim)
                        .arg("NX")
                        .arg("PX")
                        .arg(millis(in_flight_ttl)),
                )
                .await
            {
                Ok(set) => set,
                Err(e) => {
                    self.release_lost_claim(&redis_key, &claim);
                    return Err(e);
                }
            };
            if !matches!(set, Value::Nil) {
                // Free here: a response written with its effect in the order's partition and
                // not yet copied here (see `IdempotencyStore`) still counts.
                let order_partition = order_id.map(|o| self.keys.partition(o));
                if let Some(p) = order_partition.filter(|p| *p != own)
                    && let Some(found) = self.completed_in(p, key).await?
                {
                    self.copy_completed(own, &found).await?;
                    return Ok(IdempotencyBegin::Completed(found));
                }
                return Ok(IdempotencyBegin::Started { claim });
            }
            let existing: Option<String> = self
                .run(
                    "reading an idempotency key",
                    ::redis::cmd("GET").arg(&redis_key),
                )
                .await?;
            let Some(existing) = existing else {
                continue;
            };
            return Ok(match decode_record(key, &existing)? {
                IdemRecord::InFlight { fingerprint, .. } => {
                    IdempotencyBegin::InFlight { fingerprint }
                }
                done => match completed(done) {
                    Some(response) => IdempotencyBegin::Completed(response),
                    None => return Err(corrupt("idempotency record changed its kind")),
                },
            });
        }
        Err(EngineError::Unavailable(format!(
            "idempotency key `{key}` kept changing while it was claimed; try again"
        )))
    }

    async fn abandon_idempotent(&self, key: &str) -> EngineResult<()> {
        let mut invocation = self.scripts.abandon.prepare_invoke();
        invocation.key(
            self.keys
                .idem(idempotency_partition(key, self.keys.partitions()), key),
        );
        self.run_script("abandoning an idempotency key", &invocation)
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_records_round_trip() {
        let response = IdempotentResponse {
            key: "admin:k".into(),
            fingerprint: "fp".into(),
            status: 202,
            body: serde_json::json!({"a": 1}),
            ttl: Duration::from_secs(5),
            claim: String::new(),
        };
        let stored = done_record(&response).unwrap();
        assert!(stored.starts_with("{\"state\":\"done\""), "{stored}");
        let IdemRecord::Done { ttl_ms, body, .. } = serde_json::from_str(&stored).unwrap() else {
            panic!("not done: {stored}");
        };
        assert_eq!((ttl_ms, body), (5000, response.body));
        let inflight = serde_json::to_string(&IdemRecord::InFlight {
            fingerprint: "fp".into(),
            token: String::new(),
        })
        .unwrap();
        assert_eq!(inflight, r#"{"state":"inflight","fingerprint":"fp"}"#);
    }
}
