//! `router-serve`. Today: `router-serve route --prompt TEXT` prints the routing decision the
//! server will make. The HTTP server is not built yet.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use router_serve::route::Route;

#[derive(Parser)]
#[command(
    name = "router-serve",
    version,
    about = "LLM routing endpoint (decision path only so far)"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Log filter (tracing EnvFilter syntax).
    #[arg(long, env = "RUST_LOG", default_value = "warn", global = true)]
    log: String,
}

#[derive(Subcommand)]
enum Command {
    /// Print the routing decision for one prompt as JSON (nothing is forwarded).
    Route {
        /// The prompt text.
        #[arg(long)]
        prompt: String,
        /// Router artifact directory.
        #[arg(long, env = "ROUTER_ARTIFACT", default_value = "models/llmrouter")]
        router: PathBuf,
        /// Quality band, in 0–1 quality points below the best predicted model.
        #[arg(long, default_value_t = 0.05)]
        band: f64,
        /// Device for the encoder: cpu, cuda or cuda:N.
        #[arg(long, env = "ROUTER_DEVICE", default_value = "cpu")]
        device: String,
    },
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Some(Command::Route {
            prompt,
            router,
            band,
            device,
        }) => {
            let route = Route::load(&router, &device)?;
            let decision = route.decide(&prompt, band)?;
            println!("{}", serde_json::to_string_pretty(&decision)?);
            Ok(())
        }
        None => anyhow::bail!(
            "the HTTP server is not built yet; `router-serve route --prompt TEXT` prints the decision it will make"
        ),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&cli.log))
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
