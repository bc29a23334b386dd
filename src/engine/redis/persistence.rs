//! Whether the Redis holding Herald's data keeps it on disk ([`Engine::persistence`]): asked of
//! each server with `CONFIG GET appendonly` and `CONFIG GET save` (on a cluster, the master of
//! every partition's slot), falling back to `INFO persistence` where `CONFIG` is refused, as on
//! many managed services. It only reads; it never changes a server's configuration.
//!
//! [`Engine::persistence`]: crate::engine::Engine::persistence

use super::RedisEngine;
use super::conn::{Conn, within};
use crate::engine::Persistence;
use ::redis::RedisResult;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long an answer is reused. `GET /readyz` needs no credential and is probed every few
/// seconds by load balancers: asked afresh each time, every probe cost two `CONFIG GET` per
/// partition, one after the other (enough, with many partitions, to pass readyz' own deadline
/// and report a durable Redis as `unknown`). A change of the servers' settings shows within
/// this long.
const PERSISTENCE_TTL: Duration = Duration::from_secs(30);

impl RedisEngine {
    /// The weakest persistence of the servers holding Herald's keys, asked at most once per
    /// [`PERSISTENCE_TTL`]; concurrent callers wait for the one asking.
    pub(super) async fn check_persistence(&self) -> Persistence {
        let mut cached = self.persistence.lock().await;
        if let Some((asked, persistence)) = cached.as_ref()
            && asked.elapsed() < PERSISTENCE_TTL
        {
            return persistence.clone();
        }
        let persistence = self.ask_persistence().await;
        *cached = Some((Instant::now(), persistence.clone()));
        persistence
    }

    /// Asks every server holding Herald's keys (see [`RedisEngine::check_persistence`]).
    async fn ask_persistence(&self) -> Persistence {
        let nodes: Vec<&str> = match &self.conn {
            Conn::Cluster(_) => self.keys.parts.iter().map(|p| p.base.as_str()).collect(),
            _ => vec![self.keys.base.as_str()],
        };
        let mut weakest = Persistence::AppendOnlyFile;
        for key in nodes {
            weakest = weakest.weaker(self.node_persistence(key).await);
            if weakest == Persistence::None {
                break;
            }
        }
        weakest
    }

    /// The persistence of the server that owns `key`'s slot.
    async fn node_persistence(&self, key: &str) -> Persistence {
        let appendonly = match self.config_get(key, "appendonly").await {
            Ok(value) => value,
            Err(e) if e.is_timeout() || e.is_io_error() || e.is_connection_dropped() => {
                return Persistence::Unknown("Redis did not answer CONFIG GET".to_owned());
            }
            // Refused (a managed Redis, an ACL without CONFIG): INFO still says whether an
            // append-only file is written, not whether snapshots are.
            Err(_) => return self.info_persistence(key).await,
        };
        let save = self.config_get(key, "save").await.ok().flatten();
        judge(appendonly.as_deref(), save.as_deref())
    }

    async fn config_get(&self, key: &str, parameter: &str) -> RedisResult<Option<String>> {
        let mut conn = self.conn.clone();
        let reply: HashMap<String, String> = within(
            "CONFIG GET",
            self.op_timeout,
            conn.query_on_node_of(key, ::redis::cmd("CONFIG").arg("GET").arg(parameter)),
        )
        .await?;
        Ok(reply.get(parameter).cloned())
    }

    async fn info_persistence(&self, key: &str) -> Persistence {
        let mut conn = self.conn.clone();
        let info: RedisResult<String> = within(
            "INFO persistence",
            self.op_timeout,
            conn.query_on_node_of(key, ::redis::cmd("INFO").arg("persistence")),
        )
        .await;
        match info {
            Ok(info) => from_info(&info),
            Err(_) => Persistence::Unknown("Redis refused CONFIG GET and INFO".to_owned()),
        }
    }
}

/// The persistence of one server from its `appendonly` and `save` settings (`None`: not
/// reported).
fn judge(appendonly: Option<&str>, save: Option<&str>) -> Persistence {
    match (appendonly.map(str::trim), save.map(str::trim)) {
        (Some(a), _) if a.eq_ignore_ascii_case("yes") => Persistence::AppendOnlyFile,
        (Some(_), Some("")) => Persistence::None,
        (Some(_), Some(_)) => Persistence::Snapshots,
        _ => Persistence::Unknown("Redis did not report its appendonly and save settings".into()),
    }
}

/// The persistence of one server from `INFO persistence`, when `CONFIG` is refused: an
/// append-only file is reported (`aof_enabled:1`); snapshot rules are not.
fn from_info(info: &str) -> Persistence {
    let aof = info
        .lines()
        .find_map(|line| line.trim().strip_prefix("aof_enabled:"))
        .map(str::trim);
    match aof {
        Some("1") => Persistence::AppendOnlyFile,
        Some(_) => Persistence::Unknown(
            "CONFIG is refused and INFO shows no append-only file; snapshot rules cannot be read"
                .to_owned(),
        ),
        None => Persistence::Unknown("CONFIG is refused and INFO does not say".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appendonly_and_save_settings_are_judged() {
        assert_eq!(judge(Some("yes"), Some("")), Persistence::AppendOnlyFile);
        assert_eq!(
            judge(Some("yes"), Some("3600 1")),
            Persistence::AppendOnlyFile
        );
        assert_eq!(
            judge(Some("no"), Some("3600 1 300 100")),
            Persistence::Snapshots
        );
        assert_eq!(judge(Some("no"), Some("")), Persistence::None);
        assert_eq!(judge(Some("no"), Some("  ")), Persistence::None);
        assert!(matches!(judge(None, None), Persistence::Unknown(_)));
        assert!(matches!(judge(Some("no"), None), Persistence::Unknown(_)));
    }

    #[test]
    fn info_persistence_reports_only_the_append_only_file() {
        let on = "# Persistence\r\nloading:0\r\naof_enabled:1\r\naof_rewrite_in_progress:0\r\n";
        assert_eq!(from_info(on), Persistence::AppendOnlyFile);
        let off = "# Persistence\r\nloading:0\r\naof_enabled:0\r\n";
        assert!(matches!(from_info(off), Persistence::Unknown(_)));
        assert!(matches!(from_info(""), Persistence::Unknown(_)));
    }

    #[test]
    fn a_cluster_is_as_durable_as_its_weakest_master() {
        let all = [
            Persistence::AppendOnlyFile,
            Persistence::Snapshots,
            Persistence::Unknown("x".into()),
            Persistence::None,
        ];
        for (i, a) in all.iter().enumerate() {
            for (j, b) in all.iter().enumerate() {
                let weaker = a.clone().weaker(b.clone());
                assert_eq!(weaker, all[i.max(j)].clone(), "{a:?} vs {b:?}");
            }
        }
    }
}
