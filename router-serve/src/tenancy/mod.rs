//! Who is calling and what they may do and spend: keys and [`identity`], the tenancy
//! [`config`] sections, [`rules`], [`admission`] (identity + tier + rule + budget status →
//! policy), [`budget`] accounts (reserve, then settle) and [`rate_limit`]s.

pub mod admission;
pub mod budget;
pub mod config;
pub mod identity;
pub mod rate_limit;
pub mod rules;
