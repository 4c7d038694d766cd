//! `router-serve`: serves the OpenAI-compatible routing endpoint (no subcommand), or prints one
//! routing decision (`route`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use router_core::policy::Policy;
use router_serve::Server;
use router_serve::routing::decision::Route;
use router_serve::state::{CliOverrides, read_config};

#[derive(Parser)]
#[command(
    name = "router-serve",
    version,
    about = "OpenAI-compatible LLM routing endpoint: each request goes to the cheapest model \
             predicted to be within the quality band of the best"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Config file (TOML); without it the built-in default is used (see
    /// router-serve/default-config.toml).
    #[arg(long, env = "ROUTER_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Listen address (overrides server.listen).
    #[arg(long, env = "ROUTER_LISTEN")]
    listen: Option<SocketAddr>,
    /// Router artifact directory (overrides server.router).
    #[arg(long, env = "ROUTER_ARTIFACT", global = true)]
    router: Option<PathBuf>,
    /// Encoder device: cpu, cuda or cuda:N (overrides server.device).
    #[arg(long, env = "ROUTER_DEVICE", global = true)]
    device: Option<String>,
    /// Log filter (tracing EnvFilter syntax).
    #[arg(long, env = "RUST_LOG", default_value = "info", global = true)]
    log: String,
    /// Log as JSON lines.
    #[arg(long, env = "ROUTER_LOG_JSON", global = true)]
    log_json: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Print the routing decision for one prompt as JSON (nothing is forwarded).
    Route {
        /// The prompt text.
        #[arg(long)]
        prompt: String,
        /// Quality band, in 0–1 quality points below the best predicted model.
        #[arg(long, default_value_t = 0.05)]
        band: f64,
        /// How a model is chosen within the band: value or cheapest (default: the config's
        /// routing.policy).
        #[arg(long)]
        policy: Option<Policy>,
    },
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let overrides = CliOverrides {
        listen: cli.listen,
        router: cli.router,
        device: cli.device,
    };
    let config = read_config(cli.config.as_deref(), &overrides)?;
    match cli.command {
        Some(Command::Route {
            prompt,
            band,
            policy,
        }) => {
            let route = Route::load(&config.server.router, &config.server.device)?;
            let policy = policy.unwrap_or(config.routing.policy);
            let decision = route.decide(&prompt, band, policy)?;
            println!("{}", serde_json::to_string_pretty(&decision)?);
            Ok(())
        }
        None => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let server = Server::start(config, cli.config, overrides).await?;
                eprintln!("router-serve listening on http://{}", server.addr());
                server.run_until(router_serve::shutdown_signal()).await;
                anyhow::Ok(())
            })
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::new(&cli.log);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cli.log_json {
        builder.json().init();
    } else {
        builder.init();
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
