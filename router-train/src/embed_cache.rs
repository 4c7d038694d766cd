//! Prompt embeddings, computed once and cached on disk.
//!
//! The cache is one append-only file per encoder identity (id, revision, weights digest,
//! truncation mode, window, precision, pooled layers, fine-tuned layers' digest): records of
//! `[sha256(text); 32 bytes][dim × f32 LE]`. A second run on the same data encodes nothing. A
//! torn last record (a crash mid-write) is ignored when reading and cut off before the next
//! append; each batch is appended in one write, so two processes filling the same cache do not
//! interleave records.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use router_core::encoder::Encoder;
use sha2::{Digest, Sha256};

use crate::error::{Result, TrainError};

type Key = [u8; 32];

fn text_key(text: &str) -> Key {
    Sha256::digest(text.as_bytes()).into()
}

/// The cache file for an encoder identity.
pub fn cache_file(dir: &Path, encoder: &Encoder) -> PathBuf {
    let mut identity = format!(
        "{}\n{}\n{}\n{}\n{}",
        encoder.model_id(),
        encoder.revision(),
        encoder.weights_sha256(),
        encoder.truncation(),
        encoder.max_seq_length()
    );
    // f32 files keep the name they had before int8 existed; int8 ones change with its scheme.
    if let Some(scheme) = encoder.int8_scheme() {
        identity.push_str(&format!("\nint8\nscheme {scheme}"));
    }
    // Files of the last layer alone keep the name they had before layers could be chosen.
    if !encoder.layers().is_empty() {
        identity.push_str(&format!("\nlayers {:?}", encoder.layers()));
    }
    // Fine-tuned layers: one file per delta.
    if let Some(delta) = encoder.delta() {
        identity.push_str(&format!("\ndelta {}", delta.sha256));
    }
    let digest = format!("{:x}", Sha256::digest(identity.as_bytes()));
    dir.join(format!("{}-{}.bin", &digest[..16], encoder.dim()))
}

fn read_cache(path: &Path, dim: usize) -> Result<HashMap<Key, Vec<f32>>> {
    let mut map = HashMap::new();
    let mut bytes = Vec::new();
    match std::fs::File::open(path) {
        Ok(mut f) => {
            f.read_to_end(&mut bytes)
                .map_err(|source| TrainError::Cache {
                    path: path.to_owned(),
                    source,
                })?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(map),
        Err(source) => {
            return Err(TrainError::Cache {
                path: path.to_owned(),
                source,
            });
        }
    }
    let record = 32 + dim * 4;
    for chunk in bytes.chunks_exact(record) {
        let mut key = [0u8; 32];
        key.copy_from_slice(&chunk[..32]);
        let values = chunk[32..]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        map.insert(key, values);
    }
    if bytes.len() % record != 0 {
        tracing::warn!(path = %path.display(), "embedding cache has a torn last record; ignoring it");
    }
    Ok(map)
}

/// What [`embed_all`] did.
#[derive(Debug, Clone, Copy, Default)]
pub struct EmbedStats {
    pub cached: usize,
    pub encoded: usize,
    pub seconds: f64,
}

/// Threads that encode batches side by side: one per core (at most 8) when
/// `RAYON_NUM_THREADS=1`, else one (a single batch then uses every core).
pub fn encode_threads() -> usize {
    if std::env::var("RAYON_NUM_THREADS").is_ok_and(|v| v.trim() == "1") {
        std::thread::available_parallelism().map_or(1, |n| n.get().min(8))
    } else {
        1
    }
}

/// Embeds `texts` (in order), reading what it can from the cache in `cache_dir` and appending
/// what it had to encode. Texts are encoded in batches of similar length, so little padding
/// is computed.
pub fn embed_all(
    encoder: &Encoder,
    texts: &[&str],
    cache_dir: Option<&Path>,
    batch_size: usize,
    progress: bool,
) -> Result<(Vec<Vec<f32>>, EmbedStats)> {
    let start = Instant::now();
    let dim = encoder.dim();
    let path = cache_dir.map(|d| cache_file(d, encoder));
    let mut cache = match &path {
        Some(p) => read_cache(p, dim)?,
        None => HashMap::new(),
    };
    let keys: Vec<Key> = texts.iter().map(|t| text_key(t)).collect();
    let mut missing: Vec<usize> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, key) in keys.iter().enumerate() {
        if !cache.contains_key(key) && seen.insert(*key) {
            missing.push(i);
        }
    }
    let stats_cached = texts.len() - missing.len();

    if !missing.is_empty() {
        let tokenized = missing
            .iter()
            .map(|&i| encoder.tokenize(texts[i]))
            .collect::<router_core::Result<Vec<_>>>()?;
        let mut order: Vec<usize> = (0..missing.len()).collect();
        order.sort_by_key(|&j| tokenized[j].ids.len());
        let bar = if progress {
            let bar = ProgressBar::new(missing.len() as u64);
            bar.set_style(
                ProgressStyle::with_template(
                    "encoding {bar:40} {pos}/{len} prompts [{elapsed_precise} < {eta_precise}, {per_sec}]",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar
        } else {
            ProgressBar::hidden()
        };
        let mut file = match &path {
            Some(p) => {
                if let Some(parent) = p.parent() {
                    std::fs::create_dir_all(parent).map_err(|source| TrainError::Cache {
                        path: parent.to_owned(),
                        source,
                    })?;
                }
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|source| TrainError::Cache {
                        path: p.clone(),
                        source,
                    })?;
                // Drop a torn last record (a crash mid-write) before appending after it, or
                // every later record would be read out of alignment.
                let len = f.metadata().map_or(0, |m| m.len());
                let record = (32 + dim * 4) as u64;
                if len % record != 0 {
                    f.set_len(len - len % record)
                        .map_err(|source| TrainError::Cache {
                            path: p.clone(),
                            source,
                        })?;
                }
                Some(f)
            }
            None => None,
        };
        // Several batches at once, one per thread, when each thread's matrix products run on
        // one core (RAYON_NUM_THREADS=1, which `router-train` sets): on 2 cores this encodes
        // about 1.5× as many prompts per second as one batch on both cores.
        let threads = encode_threads();
        let batch_size = batch_size.max(1);
        for group in order.chunks(batch_size * threads) {
            let chunks: Vec<&[usize]> = group.chunks(batch_size).collect();
            let results: Vec<router_core::Result<Vec<Vec<f32>>>> = if chunks.len() == 1 {
                vec![
                    encoder.embed_tokenized(
                        &chunks[0]
                            .iter()
                            .map(|&j| tokenized[j].clone())
                            .collect::<Vec<_>>(),
                    ),
                ]
            } else {
                std::thread::scope(|scope| {
                    let handles: Vec<_> = chunks
                        .iter()
                        .map(|chunk| {
                            let batch: Vec<_> =
                                chunk.iter().map(|&j| tokenized[j].clone()).collect();
                            scope.spawn(move || encoder.embed_tokenized(&batch))
                        })
                        .collect();
                    handles
                        .into_iter()
                        .map(|h| {
                            h.join().unwrap_or_else(|_| {
                                Err(router_core::Error::InvalidInput(
                                    "an encoding thread panicked".to_owned(),
                                ))
                            })
                        })
                        .collect()
                })
            };
            for (chunk, vectors) in chunks.iter().zip(results) {
                let vectors = vectors?;
                // One write per batch on an O_APPEND file: whole records, never interleaved
                // with another process appending to the same cache.
                let mut records = Vec::with_capacity(chunk.len() * (32 + dim * 4));
                for (&j, v) in chunk.iter().zip(vectors) {
                    let key = keys[missing[j]];
                    records.extend_from_slice(&key);
                    for x in &v {
                        records.extend_from_slice(&x.to_le_bytes());
                    }
                    cache.insert(key, v);
                }
                if let (Some(f), Some(p)) = (file.as_mut(), path.as_ref()) {
                    f.write_all(&records).map_err(|source| TrainError::Cache {
                        path: p.clone(),
                        source,
                    })?;
                }
                bar.inc(chunk.len() as u64);
            }
        }
        bar.finish_and_clear();
    }
    let vectors = keys
        .iter()
        .map(|k| cache.get(k).cloned().unwrap_or_default())
        .collect();
    Ok((
        vectors,
        EmbedStats {
            cached: stats_cached,
            encoded: missing.len(),
            seconds: start.elapsed().as_secs_f64(),
        },
    ))
}
