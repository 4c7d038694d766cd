//! The OpenAI API shapes the router speaks: the chat-completions request as it reads it, the
//! response as it rewrites it, and its own `x-router-*` headers.

pub mod chat;
pub mod headers;
pub mod response;
