//! The HTTP layer: [`routes::app`] is the table of paths; [`handlers`] are thin functions that
//! extract, call [`crate::endpoints`] and map errors through [`error::ApiError`], the one table
//! from errors to HTTP statuses and OpenAI error bodies.

pub mod error;
pub mod handlers;
pub mod routes;
pub mod server;
