//! `router-serve`: the routing endpoint. This first slice holds the decision path
//! ([`route::Route`]: embed → predict → choose) that the HTTP server will call; the server itself
//! (OpenAI-compatible API, forwarding, streaming, fallback, logs) is the next piece of work.
//!
//! ```no_run
//! use router_serve::route::Route;
//! # fn main() -> router_core::Result<()> {
//! let route = Route::load(std::path::Path::new("models/llmrouter"), "cpu")?;
//! let decision = route.decide("What is 17 × 23?", 0.05)?;
//! println!("{}", decision.chosen);
//! # Ok(())
//! # }
//! ```

pub mod route;
