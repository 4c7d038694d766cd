//! The shape of `src/`: every file is in the "where things are" table of `docs/serving.md`, no
//! module imports a module that imports it back, and no function runs past 100 lines.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `src/`, relative, with `/` separators.
fn source_files() -> Vec<String> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, root, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(root).unwrap();
                out.push(rel.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    let mut files = Vec::new();
    walk(&src_dir(), &src_dir(), &mut files);
    files.sort();
    files
}

/// The file's text without its `#[cfg(test)]` module (the last item of every file here).
fn non_test_text(file: &str) -> String {
    let text = std::fs::read_to_string(src_dir().join(file)).unwrap();
    match text.find("\n#[cfg(test)]\nmod tests") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

/// The module path of a file: `tenancy/budget.rs` → `tenancy::budget`, `http/mod.rs` → `http`.
fn module_of(file: &str) -> String {
    let path = file.trim_end_matches(".rs").trim_end_matches("/mod");
    match path {
        "lib" | "main" => "crate".to_owned(),
        p => p.replace('/', "::"),
    }
}

#[test]
fn every_source_file_is_in_the_where_things_are_table() {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/serving.md"))
            .unwrap();
    let start = doc.find("## Where things are").expect("the section");
    let section = &doc[start..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
    let listed: BTreeSet<String> = section
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_owned)
        .collect();
    let files: BTreeSet<String> = source_files().into_iter().collect();
    let missing: Vec<_> = files.difference(&listed).collect();
    let stale: Vec<_> = listed.difference(&files).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "docs/serving.md \"Where things are\": missing {missing:?}, no such file {stale:?}"
    );
}

/// The modules each module's non-test code refers to through `crate::` paths, resolved to the
/// longest module path that exists.
fn import_graph() -> BTreeMap<String, BTreeSet<String>> {
    let files = source_files();
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(f)).collect();
    let path_re = regex::Regex::new(r"crate((?:::[a-z_][a-z0-9_]*)+)").unwrap();
    let group_re = regex::Regex::new(r"crate((?:::[a-z_][a-z0-9_]*)*)::\{([^}]*)\}").unwrap();
    let mut graph = BTreeMap::new();
    for file in files.iter().filter(|f| *f != "main.rs") {
        let from = module_of(file);
        // Comments (intra-doc links) are not imports.
        let text: String = non_test_text(file)
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let mut paths: Vec<String> = path_re
            .captures_iter(&text)
            .map(|c| c[1].trim_start_matches("::").to_owned())
            .collect();
        for c in group_re.captures_iter(&text) {
            let base = c[1].trim_start_matches("::");
            for item in c[2].split(',') {
                let item = item.trim().split("::").next().unwrap_or("").trim();
                if !item.is_empty() {
                    paths.push(
                        format!("{base}::{item}")
                            .trim_start_matches("::")
                            .to_owned(),
                    );
                }
            }
        }
        let mut targets = BTreeSet::new();
        for path in paths {
            let parts: Vec<&str> = path.split("::").collect();
            let target = (1..=parts.len())
                .rev()
                .map(|n| parts[..n].join("::"))
                .find(|m| modules.contains(m));
            if let Some(target) = target
                && target != from
                && !from.starts_with(&format!("{target}::"))
            {
                targets.insert(target);
            }
        }
        graph.insert(from, targets);
    }
    graph
}

#[test]
fn no_module_imports_a_module_that_imports_it_back() {
    let graph = import_graph();
    // Depth-first search for a cycle, reporting its path.
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|n| n == node) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, stack, done) {
                return Some(cycle);
            }
        }
        stack.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        let cycle = visit(node, &graph, &mut Vec::new(), &mut done);
        assert!(
            cycle.is_none(),
            "import cycle: {}",
            cycle.unwrap().join(" → ")
        );
    }
    // The graph is real: the pipeline reaches every layer below it.
    let chat = &graph["endpoints::chat"];
    for layer in ["routing::plan", "tenancy::admission", "upstream::forward"] {
        assert!(chat.contains(layer), "{chat:?}");
    }
}

#[test]
fn no_function_runs_past_100_lines() {
    let fn_re = regex::Regex::new(r"^(\s*)(pub(\([a-z]+\))? )?(async )?fn ([a-z_0-9]+)").unwrap();
    let mut long = Vec::new();
    for file in source_files() {
        let text = non_test_text(&file);
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let Some(c) = fn_re.captures(line) else {
                continue;
            };
            // A declaration without a body (a trait's required method) ends at its `;`.
            let declaration = lines[i..]
                .iter()
                .map(|l| l.trim_end())
                .find(|l| l.ends_with('{') || l.ends_with(';'))
                .is_some_and(|l| l.ends_with(';'));
            if declaration {
                continue;
            }
            let indent = &c[1];
            let close = format!("{indent}}}");
            let end = lines[i..].iter().position(|l| *l == close);
            if let Some(len) = end.filter(|&n| n + 1 > 100) {
                long.push(format!("{file}: {} ({} lines)", &c[5], len + 1));
            }
        }
    }
    assert!(long.is_empty(), "functions past 100 lines: {long:#?}");
}
