//! Process and machine facts: the open-file limit (every connection is a descriptor) and the
//! machine description written into each result.

use serde::Serialize;

/// Raises the soft RLIMIT_NOFILE to the hard limit and prints both to stderr.
pub fn raise_nofile_limit() {
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

#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub hostname: String,
    pub os: &'static str,
    pub arch: &'static str,
}

pub fn machine() -> Machine {
    Machine {
        cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        hostname: hostname(),
        os: std::env::consts::OS,
        arch: std::env::consts::ARCH,
    }
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
