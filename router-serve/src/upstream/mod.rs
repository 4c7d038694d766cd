//! The upstream side: [`forward`] chooses the upstream of each target model and sends the
//! request (retries, fallback to the next model); [`stream`] relays an SSE answer event by
//! event.

pub mod forward;
pub mod stream;
