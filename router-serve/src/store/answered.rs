//! The feedback index: what `/v1/feedback` needs to know about an answered request, and the
//! bounded in-process table of recent ones (the embedded store's index, and the shared store's
//! fallback while Redis is away).

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::observe::log::{DecisionRecord, Usage};

/// What `/v1/feedback` needs to know about an answered request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Answered {
    pub prompt: Option<String>,
    pub prompt_sha256: String,
    pub model: String,
    pub cost_usd: Option<f64>,
    pub usage: Option<Usage>,
    pub propensity: Option<f64>,
    /// The key (name) and team that made the request, if any.
    pub key: Option<String>,
    pub team: Option<String>,
}

impl Answered {
    /// The index entry of a finished request: only requests a model answered can be labelled.
    pub fn of(record: &DecisionRecord) -> Option<Self> {
        let model = record.model.as_ref().filter(|_| record.status == "ok")?;
        Some(Self {
            prompt: record.prompt.clone(),
            prompt_sha256: record.prompt_sha256.clone(),
            model: model.clone(),
            cost_usd: record.cost_usd,
            usage: record.usage,
            propensity: record
                .propensity
                .filter(|_| record.chosen.as_ref() == Some(model)),
            key: record.key.clone(),
            team: record.team.clone(),
        })
    }

    /// Whether a caller with key `key` and team `team` (empty: none) may label this answer:
    /// the same key, a key of the same team, or, for an anonymous request, an anonymous caller.
    pub fn may_be_labelled_by(&self, key: &str, team: &str) -> bool {
        match (&self.key, &self.team) {
            (None, _) => key.is_empty(),
            (Some(k), _) if k == key => true,
            (Some(_), Some(t)) => !team.is_empty() && t == team,
            (Some(_), None) => false,
        }
    }
}

/// The last `capacity` answered requests.
pub struct Recent {
    capacity: usize,
    order: VecDeque<String>,
    map: HashMap<String, Answered>,
}

impl Recent {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            order: VecDeque::new(),
            map: HashMap::new(),
        }
    }

    pub fn insert(&mut self, id: String, answered: Answered) {
        if self.capacity == 0 {
            return;
        }
        while self.order.len() >= self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
        self.order.push_back(id.clone());
        self.map.insert(id, answered);
    }

    pub fn get(&self, id: &str) -> Option<Answered> {
        self.map.get(id).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_last_requests_are_remembered() {
        let mut recent = Recent::new(3);
        for i in 0..40 {
            let mut record = DecisionRecord::new(&format!("req-{i}"), "chat.completions");
            record.model = Some("m".into());
            record.status = "ok".into();
            recent.insert(record.request_id.clone(), Answered::of(&record).unwrap());
        }
        assert!(recent.get("req-36").is_none());
        assert!(recent.get("req-39").is_some());
    }
}
