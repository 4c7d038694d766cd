//! How a text longer than the encoder's window is cut.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How a text longer than `max_seq_length` tokens is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Truncation {
    /// Keep the first tokens (what sentence-transformers does).
    #[default]
    Head,
    /// Keep the first and the last halves, joined by the separator token: in few-shot prompts
    /// the part that tells prompts apart is the tail.
    HeadTail,
    /// Keep the last tokens: the question of a few-shot prompt, the latest turn of a long
    /// conversation.
    Tail,
}

impl FromStr for Truncation {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "head" => Ok(Self::Head),
            "head_tail" | "head-tail" => Ok(Self::HeadTail),
            "tail" => Ok(Self::Tail),
            other => Err(Error::UnknownTruncation(other.to_owned())),
        }
    }
}

impl std::fmt::Display for Truncation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Head => "head",
            Self::HeadTail => "head_tail",
            Self::Tail => "tail",
        })
    }
}

/// Cuts token ids (with their special-token mask) to `max_len` tokens.
pub(crate) fn truncate_ids(
    ids: &[u32],
    specials: &[u32],
    max_len: usize,
    mode: Truncation,
) -> Vec<u32> {
    if ids.len() <= max_len {
        return ids.to_vec();
    }
    let prefix = specials.iter().take_while(|&&s| s == 1).count();
    let suffix = specials[prefix..]
        .iter()
        .rev()
        .take_while(|&&s| s == 1)
        .count();
    let content = &ids[prefix..ids.len() - suffix];
    let (head, tail) = (&ids[..prefix], &ids[ids.len() - suffix..]);
    let mut out = Vec::with_capacity(max_len);
    out.extend_from_slice(head);
    match mode {
        Truncation::Head => {
            let budget = max_len.saturating_sub(prefix + suffix);
            out.extend_from_slice(&content[..budget.min(content.len())]);
        }
        Truncation::HeadTail => {
            // One separator between the halves: the first trailing special token ([SEP]).
            let separator = tail.first().copied();
            let budget = max_len.saturating_sub(prefix + suffix + usize::from(separator.is_some()));
            let first = budget.div_ceil(2);
            let last = budget - first;
            out.extend_from_slice(&content[..first]);
            out.extend(separator);
            out.extend_from_slice(&content[content.len() - last..]);
        }
        Truncation::Tail => {
            let budget = max_len.saturating_sub(prefix + suffix).min(content.len());
            out.extend_from_slice(&content[content.len() - budget..]);
        }
    }
    out.extend_from_slice(tail);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // [CLS]=101, [SEP]=102, content 1..=10
    fn sample() -> (Vec<u32>, Vec<u32>) {
        let mut ids = vec![101];
        ids.extend(1..=10);
        ids.push(102);
        let mut specials = vec![1];
        specials.extend(std::iter::repeat_n(0, 10));
        specials.push(1);
        (ids, specials)
    }

    #[test]
    fn short_texts_are_untouched() {
        let (ids, specials) = sample();
        assert_eq!(truncate_ids(&ids, &specials, 12, Truncation::Head), ids);
        assert_eq!(truncate_ids(&ids, &specials, 64, Truncation::HeadTail), ids);
    }

    #[test]
    fn head_keeps_the_first_tokens() {
        let (ids, specials) = sample();
        assert_eq!(
            truncate_ids(&ids, &specials, 6, Truncation::Head),
            vec![101, 1, 2, 3, 4, 102]
        );
    }

    #[test]
    fn tail_keeps_the_last_tokens_inside_cls_and_sep() {
        let (ids, specials) = sample();
        assert_eq!(
            truncate_ids(&ids, &specials, 6, Truncation::Tail),
            vec![101, 7, 8, 9, 10, 102]
        );
    }

    #[test]
    fn head_tail_keeps_both_ends_joined_by_sep() {
        let (ids, specials) = sample();
        // budget = 8 - 3 = 5 → first 3, last 2
        assert_eq!(
            truncate_ids(&ids, &specials, 8, Truncation::HeadTail),
            vec![101, 1, 2, 3, 102, 9, 10, 102]
        );
    }

    #[test]
    fn truncation_parses() {
        assert_eq!("head".parse::<Truncation>().ok(), Some(Truncation::Head));
        assert_eq!(
            "head_tail".parse::<Truncation>().ok(),
            Some(Truncation::HeadTail)
        );
        assert!("middle".parse::<Truncation>().is_err());
    }
}
