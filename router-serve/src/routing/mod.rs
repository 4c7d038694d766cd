//! The routing decision: [`plan`] (route or pass through, and the models to try in order,
//! among those [`eligibility`] lets serve the request) →
//! the prompt embedded and every model's quality predicted on the [`batcher`] thread (answers
//! kept in the [`cache`]) → the band applied in [`decision`] → [`explore`]'s share drawn at
//! random from the band.

pub mod batcher;
pub mod cache;
pub mod decision;
pub mod eligibility;
pub mod explore;
pub mod plan;
