//! What each endpoint does, behind the thin handlers of [`crate::http`]: the chat pipeline, the
//! decision endpoint, feedback, models and health, and the admin API.

pub mod admin;
pub mod chat;
pub mod feedback;
pub mod info;
pub mod route;
