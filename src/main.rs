//! The `herald` binary: `herald serve` runs every role (or `--roles` a subset).

use clap::{Parser, Subcommand};
use herald::config::{Config, Overrides};
use herald::server::{self, Roles};
use std::net::SocketAddr;
use std::path::PathBuf;

/// mimalloc instead of the system allocator: request handling allocates many small, short-lived
/// buffers (JSON values, strings), and glibc malloc took a fifth of the CPU in profiles.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Log directives added to RUST_LOG: crates whose most verbose level prints message payloads.
const NO_PAYLOAD_LOGS: &str = "tungstenite=info";

#[derive(Parser)]
#[command(name = "herald", version, about = "Real-time order status push server")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the server.
    Serve {
        /// Configuration file (TOML); see config/herald.toml for every key.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Address to listen on (overrides `listen`); port 0 picks a free port.
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
        /// Redis URL; implies `[engine] kind = "redis"`.
        #[arg(long, value_name = "URL")]
        redis_url: Option<String>,
        /// Roles to run: any of api, worker, push, webhooks (comma-separated), or all.
        #[arg(long, default_value = "all")]
        roles: Roles,
    },
}

fn main() -> std::process::ExitCode {
    // tungstenite's trace level prints every WebSocket message, `connection_init` credentials
    // included: it is held at info whatever RUST_LOG says (its debug level adds per-connection
    // noise and nothing an operator needs), so no level logs a secret.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
        .add_directive(NO_PAYLOAD_LOGS.parse().expect("a valid directive"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Serve {
            config,
            listen,
            redis_url,
            roles,
        } => Config::load(
            config.as_deref(),
            std::env::vars(),
            &Overrides { listen, redis_url },
        )
        .and_then(|config| {
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(server::serve(config, roles))
        }),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
