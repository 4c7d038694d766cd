//! Lexical features: what the sentence encoder does not see.
//!
//! all-MiniLM-L6-v2 lowercases its input, reads at most 256 tokens and averages them into one
//! meaning; routing data often tells its tasks apart by surface form instead: capitals and
//! question marks (TriviaQA against Natural Questions), answer-option layout, LaTeX, code
//! symbols. These features are hashed character n-grams of the prompt (1 to 4 characters, taken
//! inside each whitespace-separated word padded by one space on each side, like scikit-learn's
//! `char_wb` analyser, case kept), log-scaled counts (`ln(1 + n)`), weighted by the inverse
//! document frequency of the prompts the router was fitted on (training and validation texts)
//! and L2-normalised. A head reads them after the
//! embedding: its input is `[embedding ‖ lexical]`.
//!
//! The hash is FNV-1a (64 bits) of the n-gram's UTF-8 bytes, modulo `dim`: stable across
//! platforms and builds, so a router's features are the same wherever it is served.

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The name of the inverse-document-frequency tensor in `head.safetensors`.
pub const IDF_TENSOR: &str = "lexical.idf";

/// How lexical features are computed (in `router.json`; absent for routers without them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LexicalSpec {
    /// Number of hash buckets: the length of the feature vector.
    pub dim: usize,
    /// Shortest and longest character n-gram.
    pub min_n: usize,
    pub max_n: usize,
    /// Longer prompts are read as their first and last `max_chars / 2` characters.
    pub max_chars: usize,
}

impl Default for LexicalSpec {
    fn default() -> Self {
        Self {
            dim: 1024,
            min_n: 1,
            max_n: 4,
            max_chars: 16_384,
        }
    }
}

impl LexicalSpec {
    fn check(&self) -> Result<()> {
        if self.dim == 0 || self.min_n == 0 || self.min_n > self.max_n || self.max_chars < 2 {
            return Err(Error::InvalidInput(format!(
                "lexical features need dim ≥ 1, 1 ≤ min_n ≤ max_n and max_chars ≥ 2, got {self:?}"
            )));
        }
        Ok(())
    }

    /// Hashed n-gram counts of `text`, as sorted `(bucket, count)` pairs.
    pub fn counts(&self, text: &str) -> Vec<(usize, f32)> {
        let chars: Vec<char> = text.chars().collect();
        let half = self.max_chars / 2;
        let read: Vec<char> = if chars.len() > self.max_chars {
            chars[..half]
                .iter()
                .chain(&chars[chars.len() - half..])
                .copied()
                .collect()
        } else {
            chars
        };
        let mut buckets = Vec::new();
        let mut padded: Vec<char> = Vec::new();
        let mut utf8 = Vec::new();
        for word in read.split(|c| c.is_whitespace()).filter(|w| !w.is_empty()) {
            padded.clear();
            padded.push(' ');
            padded.extend_from_slice(word);
            padded.push(' ');
            for n in self.min_n..=self.max_n.min(padded.len()) {
                for gram in padded.windows(n) {
                    utf8.clear();
                    for c in gram {
                        let mut b = [0u8; 4];
                        utf8.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
                    }
                    buckets.push((fnv1a(&utf8) % self.dim as u64) as usize);
                }
            }
        }
        buckets.sort_unstable();
        let mut out: Vec<(usize, f32)> = Vec::new();
        for b in buckets {
            match out.last_mut() {
                Some((last, n)) if *last == b => *n += 1.0,
                _ => out.push((b, 1.0)),
            }
        }
        out
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Lexical features with their inverse document frequencies.
#[derive(Debug, Clone, PartialEq)]
pub struct Lexical {
    spec: LexicalSpec,
    idf: Vec<f32>,
}

impl Lexical {
    /// Fits the inverse document frequencies on `texts` (the prompts a router is fitted on),
    /// smoothed as scikit-learn does: `ln((1 + n) / (1 + df)) + 1`.
    pub fn fit(spec: LexicalSpec, texts: &[&str]) -> Result<Self> {
        spec.check()?;
        let mut df = vec![0usize; spec.dim];
        for text in texts {
            for (bucket, _) in spec.counts(text) {
                df[bucket] += 1;
            }
        }
        let n = texts.len() as f64;
        let idf = df
            .iter()
            .map(|&d| (((1.0 + n) / (1.0 + d as f64)).ln() + 1.0) as f32)
            .collect();
        Ok(Self { spec, idf })
    }

    /// Rebuilds from a manifest's spec and the `lexical.idf` tensor.
    pub fn from_tensor(spec: LexicalSpec, idf: &Tensor) -> Result<Self> {
        spec.check()?;
        let idf = idf.flatten_all()?.to_vec1::<f32>()?;
        if idf.len() != spec.dim {
            return Err(Error::InvalidInput(format!(
                "tensor `{IDF_TENSOR}` has {} values, the lexical spec says dim {}",
                idf.len(),
                spec.dim
            )));
        }
        if idf.iter().any(|w| !w.is_finite()) {
            return Err(Error::InvalidInput(format!(
                "tensor `{IDF_TENSOR}` holds a non-finite weight"
            )));
        }
        Ok(Self { spec, idf })
    }

    pub fn spec(&self) -> LexicalSpec {
        self.spec
    }

    pub fn dim(&self) -> usize {
        self.spec.dim
    }

    /// The `lexical.idf` tensor, for `head.safetensors`.
    pub fn tensor(&self, device: &Device) -> Result<Tensor> {
        Ok(Tensor::from_slice(&self.idf, self.spec.dim, device)?)
    }

    /// Appends the features of `text` (`dim` values, unit norm, or zeros for a text without
    /// a word) to `out`.
    pub fn extend(&self, text: &str, out: &mut Vec<f32>) {
        let start = out.len();
        out.resize(start + self.spec.dim, 0.0);
        let features = &mut out[start..];
        let mut norm = 0.0f32;
        for (bucket, count) in self.spec.counts(text) {
            let w = count.ln_1p() * self.idf[bucket];
            features[bucket] = w;
            norm += w * w;
        }
        if norm > 0.0 {
            let scale = norm.sqrt().recip();
            features.iter_mut().for_each(|v| *v *= scale);
        }
    }

    /// The features of `text`.
    pub fn features(&self, text: &str) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.spec.dim);
        self.extend(text, &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(dim: usize) -> LexicalSpec {
        LexicalSpec {
            dim,
            ..LexicalSpec::default()
        }
    }

    #[test]
    fn fnv1a_matches_the_published_vectors() {
        // From the FNV reference test suite (Fowler, Noll, Vo): "" and "a", 64-bit FNV-1a.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn counts_are_the_padded_word_ngrams() {
        // "ab": padded " ab " → 1-grams ' ', a, b, ' '; 2-grams " a", ab, "b "; 3-grams " ab",
        // "ab "; one 4-gram " ab ": 10 n-grams, ' ' twice.
        let s = LexicalSpec {
            dim: 1 << 20,
            ..LexicalSpec::default()
        };
        let counts = s.counts("ab");
        assert_eq!(counts.iter().map(|c| c.1).sum::<f32>(), 10.0);
        let space = (fnv1a(b" ") % s.dim as u64) as usize;
        assert_eq!(counts.iter().find(|c| c.0 == space).map(|c| c.1), Some(2.0));
        // Whitespace of any kind and amount only separates words.
        assert_eq!(s.counts("ab"), s.counts(" \tab\n "));
        assert!(s.counts("").is_empty() && s.counts(" \n").is_empty());
    }

    #[test]
    fn features_are_unit_norm_and_keep_case() -> Result<()> {
        let texts = [
            "What is the capital of France?",
            "what is the capital of france",
        ];
        let lex = Lexical::fit(spec(256), &texts)?;
        let (a, b) = (lex.features(texts[0]), lex.features(texts[1]));
        for f in [&a, &b] {
            let norm: f32 = f.iter().map(|v| v * v).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-5, "{norm}");
        }
        let cosine: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!(cosine < 0.99 && cosine > 0.5, "{cosine}");
        assert!(lex.features("").iter().all(|&v| v == 0.0));
        Ok(())
    }

    #[test]
    fn rarer_ngrams_weigh_more() -> Result<()> {
        let lex = Lexical::fit(spec(1 << 16), &["the cat", "the dog", "the cow"])?;
        let idf = |gram: &str| lex.idf[(fnv1a(gram.as_bytes()) % (1 << 16)) as usize];
        // "the" is in all three (idf 1), "cat" in one: ln(4 / 2) + 1.
        assert!((idf("the") - 1.0).abs() < 1e-6);
        assert!((idf("cat") - (2.0f32.ln() + 1.0)).abs() < 1e-6);
        Ok(())
    }

    #[test]
    fn long_texts_are_read_at_both_ends() {
        let s = LexicalSpec {
            max_chars: 8,
            ..spec(1 << 16)
        };
        // 4 + 4 characters kept: "abcd" and "wxyz" are one word once joined.
        assert_eq!(s.counts("abcd ---------- wxyz"), s.counts("abcdwxyz"));
    }

    #[test]
    fn tensor_round_trip_and_bad_tensors() -> Result<()> {
        let lex = Lexical::fit(spec(64), &["one prompt", "another one"])?;
        let t = lex.tensor(&Device::Cpu)?;
        assert_eq!(Lexical::from_tensor(lex.spec(), &t)?, lex);
        assert!(Lexical::from_tensor(spec(32), &t).is_err());
        let nan = Tensor::from_slice(&[f32::NAN; 64], 64, &Device::Cpu)?;
        assert!(Lexical::from_tensor(spec(64), &nan).is_err());
        assert!(Lexical::fit(spec(0), &["x"]).is_err());
        Ok(())
    }
}
