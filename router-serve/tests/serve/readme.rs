//! The documentation's curl examples (docs/serving.md) and its example config
//! (docs/configuration.md), run for real.

use std::process::Command;

use router_serve::config::ServeConfig;

use crate::common::TestServer;

fn doc(name: &str) -> String {
    std::fs::read_to_string(format!("{}/../docs/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// The commands of the first ```sh block after `marker`, continuation lines joined.
fn commands_after(text: &str, marker: &str) -> Vec<String> {
    let start = text.find(marker).expect("marker in the doc");
    let block = text[start..].split("```sh\n").nth(1).unwrap();
    let block = block.split("```").next().unwrap();
    let mut commands = Vec::new();
    let mut current = String::new();
    for line in block.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(head) => current.push_str(head),
            None => {
                current.push_str(line);
                commands.push(std::mem::take(&mut current));
            }
        }
    }
    commands
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_curl_examples_work() {
    let t = TestServer::start().await;
    let base = format!("http://{}", t.server.addr());
    let commands = commands_after(&doc("serving.md"), "<!-- curl-examples");
    assert!(commands.len() >= 8, "{commands:?}");
    let mut request_id: Option<String> = None;
    for command in commands {
        assert!(command.starts_with("curl "), "{command}");
        let mut command = command.replace("http://127.0.0.1:8080", &base).replacen(
            "curl ",
            "curl --fail-with-body ",
            1,
        );
        if let Some(id) = &request_id {
            command = command.replace("req_…", id);
        }
        let output = tokio::task::spawn_blocking(move || {
            let out = Command::new("sh").args(["-c", &command]).output().unwrap();
            (command, out)
        })
        .await
        .unwrap();
        let (command, out) = output;
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{command}\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        if let Some(line) = stdout
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("x-router-request-id:"))
        {
            request_id = line.split(':').nth(1).map(|s| s.trim().to_owned());
        }
    }
    assert!(request_id.is_some(), "a chat example shows the request id");
    t.server.shutdown().await;
}

#[test]
fn the_readme_example_config_is_valid() {
    let text = doc("configuration.md");
    let start = text.find("An example with a local vLLM").unwrap();
    let block = text[start..].split("```toml\n").nth(1).unwrap();
    let block = block.split("```").next().unwrap();
    let config = ServeConfig::parse(block, "docs/configuration.md").unwrap();
    assert_eq!(config.upstreams.len(), 2);
    assert_eq!(
        config.upstream_for("llama-3.1-8b-instruct").unwrap().1,
        "llama3.1:8b"
    );
}
