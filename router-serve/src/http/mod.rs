//! The HTTP layer: [`routes::app`] is the table of paths; [`handlers`] are thin functions that
//! extract, call [`crate::service`] and map errors through [`crate::error::ApiError`].

pub mod handlers;
pub mod routes;
