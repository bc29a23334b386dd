//! Process and machine facts: the open-file limit (every connection is a descriptor) and the
//! machine description written into each result.

use serde::Serialize;
use std::sync::OnceLock;

/// The open-file limits of this process (after [`raise_nofile_limit`]); `None`: unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Nofile {
    pub soft: Option<u64>,
    pub hard: Option<u64>,
}

static NOFILE: OnceLock<Nofile> = OnceLock::new();

/// This process's open-file limits as [`raise_nofile_limit`] left them (read now if it has not
/// run).
pub fn nofile() -> Nofile {
    *NOFILE.get_or_init(read_nofile)
}

// rlim_t is u64 on Linux but not on every target.
#[allow(clippy::unnecessary_cast)]
fn limit(v: libc::rlim_t) -> Option<u64> {
    (v != libc::RLIM_INFINITY).then_some(v as u64)
}

fn read_nofile() -> Nofile {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Nofile::default();
    }
    Nofile {
        soft: limit(lim.rlim_cur),
        hard: limit(lim.rlim_max),
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit and prints both to stderr; [`nofile`]
/// returns the result.
pub fn raise_nofile_limit() {
    raise_nofile();
    let _ = NOFILE.set(read_nofile());
}

fn raise_nofile() {
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            eprintln!(
                "nofile: getrlimit failed: {}",
                std::io::Error::last_os_error()
            );
            return;
        }
        let before = lim.rlim_cur;
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            } else {
                eprintln!(
                    "nofile: could not raise the soft limit: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
        eprintln!(
            "nofile: soft {} (was {}), hard {}",
            fmt_limit(lim.rlim_cur),
            fmt_limit(before),
            fmt_limit(lim.rlim_max)
        );
    }
}

fn fmt_limit(v: libc::rlim_t) -> String {
    if v == libc::RLIM_INFINITY {
        "unlimited".into()
    } else {
        v.to_string()
    }
}

/// Makes this thread's timed sleeps wake as close to their deadline as the kernel can (the
/// default slack for ordinary threads is 50 us). Used by the open-loop pacer thread.
pub fn tighten_timer_slack() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_TIMERSLACK takes a plain integer and affects only the calling thread.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
    }
}

/// The machine a result was measured on, as stored in every result's JSON (`machine`) and
/// shown by `herald-loadtest report`.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub hostname: String,
    pub os: &'static str,
    pub arch: &'static str,
    /// `model name` of the first CPU in /proc/cpuinfo.
    pub cpu_model: Option<String>,
    /// MemTotal from /proc/meminfo.
    pub memory_kib: Option<u64>,
    /// /proc/sys/kernel/osrelease.
    pub kernel: Option<String>,
    /// The load generator's open-file limits (this process).
    pub nofile: Nofile,
}

pub fn machine() -> Machine {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    Machine {
        cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        hostname: hostname(),
        os: std::env::consts::OS,
        arch: std::env::consts::ARCH,
        cpu_model: read("/proc/cpuinfo").and_then(|t| proc_field(&t, "model name")),
        memory_kib: read("/proc/meminfo")
            .and_then(|t| proc_field(&t, "MemTotal"))
            .and_then(|v| v.trim_end_matches("kB").trim().parse().ok()),
        kernel: read("/proc/sys/kernel/osrelease").map(|t| t.trim().to_string()),
        nofile: nofile(),
    }
}

/// The value of the first `key: value` line (as in /proc/cpuinfo and /proc/meminfo).
fn proc_field(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key).then(|| v.trim().to_string())
    })
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its whole length; gethostname writes at most that much.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_fields_are_read_by_key() {
        let cpuinfo = "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu\n";
        assert_eq!(
            proc_field(cpuinfo, "model name").as_deref(),
            Some("AMD EPYC 7B13")
        );
        assert_eq!(proc_field(cpuinfo, "model"), None);
        let m = machine();
        assert!(m.cores >= 1);
        assert!(m.memory_kib.is_some_and(|k| k > 0));
        assert_eq!(nofile(), read_nofile());
    }
}
