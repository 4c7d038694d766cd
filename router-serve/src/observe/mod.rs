//! Observability: the decision and feedback [`log`]s, Prometheus [`metrics`], and [`record`],
//! which writes both (and the trace span's fields) for a finished request.

pub mod log;
pub mod metrics;
pub mod record;
