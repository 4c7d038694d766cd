//! Integration tests of router-serve: the real encoder and the shipped default router, real
//! HTTP on 127.0.0.1:0, and a fake OpenAI-compatible upstream (in `common`) whose behaviour is
//! set per model name.

// Helpers outside `#[test]` functions panic on failure exactly like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod api;
mod common;
mod docs;
mod eligibility;
mod hardening;
mod layout;
mod openai_sdk;
mod ops;
mod pools;
mod readme;
mod route;
mod shared;
mod tenants;
mod upstream;
