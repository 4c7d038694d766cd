//! The documentation cannot drift: the configuration reference lists exactly the keys of
//! `default-config.toml`, every commented key there is real, every metric is documented, and
//! every relative link in the Markdown files resolves.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use router_serve::config::{DEFAULT_CONFIG, ServeConfig};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap()
}

/// A line of the default config with its leading `# ` removed when it is a commented-out key
/// or table (`# key = …`, `# [table]`, `#         { …` continuing an array).
fn uncomment(line: &str) -> Option<&str> {
    let rest = line.strip_prefix("# ")?;
    let key_or_table = rest.starts_with('[')
        || rest.starts_with("  ")
        || rest
            .split_once('=')
            .is_some_and(|(k, _)| !k.trim().is_empty() && !k.trim().contains(' '));
    key_or_table.then_some(rest)
}

/// `section.key` for every key of the default config, commented or not; `[tiers.free]` counts
/// as `tiers.NAME`, `[prices."m"]` as `prices.MODEL`, and the map `[upstreams.models]` as the
/// key `upstreams.models`.
fn default_config_keys() -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    let mut section = String::new();
    for line in DEFAULT_CONFIG.lines() {
        let line = uncomment(line).unwrap_or(line);
        if line.starts_with('#') || line.starts_with(' ') {
            continue;
        }
        if let Some(table) = line.strip_prefix('[') {
            let name = table.trim_start_matches('[');
            let name = name.split(']').next().unwrap_or("");
            section = match name.split_once('.') {
                Some(("tiers", _)) => "tiers.NAME".to_owned(),
                Some(("prices", _)) => "prices.MODEL".to_owned(),
                Some(("models", _)) => "models.MODEL".to_owned(),
                Some(("pools", _)) => "pools.MODEL".to_owned(),
                Some(("upstreams", sub)) => {
                    keys.insert(format!("upstreams.{sub}"));
                    "upstreams.map".to_owned()
                }
                _ => name.to_owned(),
            };
            continue;
        }
        if section == "upstreams.map" {
            continue;
        }
        if let Some((key, _)) = line.split_once('=') {
            let key = key.trim();
            if !key.is_empty() && !key.contains(' ') && !key.contains('"') {
                keys.insert(format!("{section}.{key}"));
            }
        }
    }
    keys
}

#[test]
fn the_configuration_reference_lists_every_key_of_the_default_config() {
    let doc = read("docs/configuration.md");
    let documented: BTreeSet<String> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .filter(|k| k.contains('.'))
        .map(str::to_owned)
        .collect();
    let keys = default_config_keys();
    assert!(keys.len() > 60, "{keys:?}");
    let missing: Vec<_> = keys.difference(&documented).collect();
    let stale: Vec<_> = documented.difference(&keys).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "docs/configuration.md: undocumented keys {missing:?}; keys not in default-config.toml {stale:?}"
    );
}

#[test]
fn every_commented_key_of_the_default_config_is_valid() {
    let text: Vec<&str> = DEFAULT_CONFIG
        .lines()
        .filter(|l| !l.contains("# alternative:"))
        .map(|l| uncomment(l).unwrap_or(l))
        .collect();
    let text = text.join("\n");
    let config = ServeConfig::parse(&text, "default-config.toml, every key on").unwrap();
    assert!(config.tenants.auth.required);
    assert_eq!(config.tenants.rules.len(), 1);
    assert_eq!(config.tenants.budgets.len(), 1);
    assert_eq!(config.routing.explore_band, Some(0.15));
}

#[test]
fn every_metric_is_documented() {
    let source = read("router-serve/src/observe/metrics.rs");
    let doc = read("docs/serving.md");
    let names = regex::Regex::new(r#""(router_[a-z_]+)""#).unwrap();
    let missing: Vec<String> = names
        .captures_iter(&source)
        .map(|c| c[1].to_owned())
        .filter(|name| !doc.contains(&format!("`{name}")))
        .collect();
    assert!(
        missing.is_empty(),
        "metrics not in docs/serving.md: {missing:?}"
    );
}

/// GitHub's anchor for a heading.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == '-' || *c == '_' || *c == ' ')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(text: &str) -> BTreeSet<String> {
    let mut in_code = false;
    let mut out = BTreeSet::new();
    for line in text.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
        } else if !in_code && line.starts_with('#') {
            out.insert(anchor(line.trim_start_matches('#')));
        }
    }
    out
}

/// The text outside fenced code blocks.
fn prose(text: &str) -> String {
    let mut in_code = false;
    let mut out = String::new();
    for line in text.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
        } else if !in_code {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[test]
fn every_relative_link_in_the_docs_resolves() {
    let mut files = vec![
        "README.md".to_owned(),
        "datasets/README.md".to_owned(),
        "models/README.md".to_owned(),
    ];
    for entry in std::fs::read_dir(root().join("docs")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".md") {
            files.push(format!("docs/{name}"));
        }
    }
    let link = regex::Regex::new(r"\]\(([^)\s]+)\)").unwrap();
    let mut broken = Vec::new();
    for file in &files {
        let text = read(file);
        let dir = Path::new(file).parent().unwrap_or(Path::new(""));
        for c in link.captures_iter(&prose(&text)) {
            let target = &c[1];
            if target.starts_with("http://") || target.starts_with("https://") {
                continue;
            }
            let (path, fragment) = target.split_once('#').unwrap_or((target, ""));
            let resolved = if path.is_empty() {
                root().join(file)
            } else {
                root().join(dir).join(path)
            };
            if !resolved.exists() {
                broken.push(format!("{file}: {target} (no such file)"));
                continue;
            }
            if !fragment.is_empty() && path.ends_with(".md") || path.is_empty() {
                let text = std::fs::read_to_string(&resolved).unwrap_or_default();
                if !fragment.is_empty() && !anchors(&text).contains(fragment) {
                    broken.push(format!("{file}: {target} (no such heading)"));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links: {broken:#?}");
    assert!(files.len() >= 10, "{files:?}");
}

#[test]
fn the_readme_is_a_front_door() {
    let readme = read("README.md");
    let lines = readme.lines().count();
    assert!(
        lines <= 300,
        "README.md has {lines} lines; detail belongs in docs/"
    );
    for command in ["cargo run -p router-serve\n", "cargo test --workspace\n"] {
        assert!(readme.contains(command), "the README names `{command}`");
    }
}
