//! Clients spread over several processes (`--processes P`), so that each holds its share of
//! the connections under its own descriptor limit: this program is started again P times with
//! its own arguments plus the hidden `--shard K`, and parent and children talk in JSON lines
//! (a child writes to its stdout and reads its parent's lines on its stdin). See
//! [`crate::fanout`] and [`crate::idle`] for what they say.

use anyhow::{Context, bail};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::io::Write as _;
use std::process::Stdio;
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

/// Which of a run's connection indices a process opens: every `of`-th from `index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub of: u32,
}

impl Shard {
    /// The only process of a run.
    pub const ALL: Shard = Shard { index: 0, of: 1 };

    pub fn indices(self, n: u64) -> impl Iterator<Item = u64> {
        (u64::from(self.index)..n).step_by(self.of.max(1) as usize)
    }

    pub fn len(self, n: u64) -> u64 {
        n.saturating_sub(u64::from(self.index))
            .div_ceil(u64::from(self.of.max(1)))
    }
}

/// One process of a run and its open-file limits (every connection is a descriptor).
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct ProcessInfo {
    /// What it does: `publisher`, `subscribers`, `connections`, or both (a one-process run).
    pub role: String,
    pub pid: u32,
    /// Connections this process opened.
    pub connections: u64,
    pub nofile: crate::sys::Nofile,
}

impl ProcessInfo {
    pub fn this(role: &str, connections: u64) -> Self {
        Self {
            role: role.into(),
            pid: std::process::id(),
            connections,
            nofile: crate::sys::nofile(),
        }
    }

    /// Its row in a run's final table.
    pub fn add_row(&self, t: &mut crate::stats::Table) {
        let limit = |v: Option<u64>| v.map_or_else(|| "unlimited".into(), |v| v.to_string());
        t.row(
            format!("process {} ({})", self.pid, self.role),
            format!(
                "{} connections, nofile soft {} / hard {}",
                self.connections,
                limit(self.nofile.soft),
                limit(self.nofile.hard)
            ),
        );
    }
}

/// A child's line to its parent (stdout, flushed at once).
pub fn send_line(msg: &impl Serialize) -> anyhow::Result<()> {
    let text = serde_json::to_string(msg)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")?;
    out.flush()?;
    Ok(())
}

/// A child's view of its parent's lines (its stdin).
pub fn parent_lines() -> tokio::io::Lines<BufReader<tokio::io::Stdin>> {
    BufReader::new(tokio::io::stdin()).lines()
}

/// The child processes, seen from the parent. `M` is what children send.
pub struct Workers<M> {
    /// How the children are called in errors ("subscriber process").
    name: &'static str,
    children: Vec<(Child, ChildStdin)>,
    /// What [`Workers::spawn`]'s `keep` kept, with the child's index; `None`: its output ended.
    messages: mpsc::UnboundedReceiver<(usize, Option<M>)>,
}

impl<M: DeserializeOwned + std::fmt::Debug + Send + 'static> Workers<M> {
    /// Starts `n` children. Every line a child writes is parsed as `M` and handed to `keep`
    /// (with the child's index), which deals with it at once (e.g. live counters) or returns it
    /// for [`Self::one_from_each`].
    pub fn spawn(
        n: u32,
        name: &'static str,
        keep: impl Fn(usize, M) -> Option<M> + Send + Sync + 'static,
    ) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("finding this program to start it again")?;
        let own_args: Vec<_> = std::env::args_os().skip(1).collect();
        let keep = Arc::new(keep);
        let (tx, messages) = mpsc::unbounded_channel();
        let mut children = Vec::new();
        for k in 0..n {
            let mut child = Command::new(&exe)
                .args(&own_args)
                .arg("--shard")
                .arg(k.to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("starting {name} {k}"))?;
            let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
                bail!("{name} {k}: no pipes");
            };
            let (keep, tx) = (keep.clone(), tx.clone());
            let k = k as usize;
            tokio::spawn(async move {
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    match serde_json::from_str::<M>(&line) {
                        Ok(msg) => {
                            if let Some(msg) = keep(k, msg) {
                                let _ = tx.send((k, Some(msg)));
                            }
                        }
                        Err(e) => eprintln!("\n{name} {k}: unreadable line ({e}): {line}"),
                    }
                }
                let _ = tx.send((k, None));
            });
            children.push((child, stdin));
        }
        Ok(Self {
            name,
            children,
            messages,
        })
    }

    /// The next kept message of every child (in child order).
    pub async fn one_from_each(&mut self, what: &str) -> anyhow::Result<Vec<M>> {
        let name = self.name;
        let mut got: Vec<Option<M>> = self.children.iter().map(|_| None).collect();
        while got.iter().any(Option::is_none) {
            match self.messages.recv().await {
                Some((k, Some(msg))) => got[k] = Some(msg),
                // A child that has said what was asked may end its output.
                Some((k, None)) if got[k].is_some() => {}
                Some((k, None)) => {
                    bail!("{name} {k} ended before sending {what} (see its output above)")
                }
                None => bail!("every {name} ended before sending {what}"),
            }
        }
        Ok(got.into_iter().flatten().collect())
    }

    /// Sends `msg` as one line to every child.
    pub async fn tell_all(&mut self, msg: &impl Serialize) -> anyhow::Result<()> {
        let line = serde_json::to_string(msg)? + "\n";
        for (k, (_, stdin)) in self.children.iter_mut().enumerate() {
            stdin
                .write_all(line.as_bytes())
                .await
                .with_context(|| format!("writing to {} {k}", self.name))?;
            stdin.flush().await?;
        }
        Ok(())
    }

    /// Closes every child's stdin and waits for it to exit successfully.
    pub async fn wait(self) -> anyhow::Result<()> {
        for (k, (mut child, stdin)) in self.children.into_iter().enumerate() {
            drop(stdin);
            let status = child.wait().await?;
            if !status.success() {
                bail!("{} {k} ended with {status}", self.name);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_split_the_indices_between_them_exactly() {
        let n = 10;
        let mut all: Vec<u64> = (0..3)
            .flat_map(|k| Shard { index: k, of: 3 }.indices(n))
            .collect();
        assert_eq!(Shard { index: 0, of: 3 }.len(n), 4);
        assert_eq!(Shard { index: 2, of: 3 }.len(n), 3);
        assert_eq!(Shard { index: 5, of: 6 }.len(3), 0);
        all.sort_unstable();
        assert_eq!(all, (0..n).collect::<Vec<_>>());
        assert_eq!(Shard::ALL.indices(n).count(), 10);
    }
}
