//! A real client: the official `openai` Python SDK (installed from PyPI into the test's temp
//! directory on first use) drives the server through chat, streaming chat and the models list,
//! and its parsed objects must validate against the SDK's own types.

use std::path::PathBuf;
use std::process::Command;

use crate::common::TestServer;

const SCRIPT: &str = r#"
import sys
from openai import OpenAI
from openai.types import Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk

client = OpenAI(base_url=sys.argv[1], api_key="unused", max_retries=0)

raw = client.chat.completions.with_raw_response.create(
    model="router",
    messages=[{"role": "system", "content": "Be brief."},
              {"role": "user", "content": "What is 17 * 23?"}],
)
chat = raw.parse()
ChatCompletion.model_validate_json(raw.http_response.text)
assert chat.model == raw.headers["x-router-model"], (chat.model, raw.headers)
assert chat.choices[0].message.content == "Hello from the fake upstream."
assert chat.usage.completion_tokens == 8

stream = client.chat.completions.create(
    model="router-cost",
    messages=[{"role": "user", "content": "Say hello."}],
    stream=True,
)
text = ""
for chunk in stream:
    ChatCompletionChunk.model_validate(chunk.model_dump())
    if chunk.choices and chunk.choices[0].delta.content:
        text += chunk.choices[0].delta.content
assert text == "Hello world", text

ids = [m.id for m in client.models.list()]
for m in client.models.list():
    Model.model_validate(m.model_dump())
assert "router" in ids and "router-balanced" in ids, ids
print("sdk ok")
"#;

/// A directory with the `openai` package, installed by pip when missing.
fn sdk_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("python-openai");
    let importable = |dir: &PathBuf| {
        Command::new("python3")
            .args(["-c", "import openai"])
            .env("PYTHONPATH", dir)
            .status()
            .is_ok_and(|s| s.success())
    };
    if !importable(&dir) {
        let status = Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--target",
            ])
            .arg(&dir)
            .arg("openai>=1.40,<3")
            .status()
            .expect("python3 with pip is needed to install the openai SDK");
        assert!(status.success(), "pip install openai failed");
    }
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_openai_sdk_parses_every_answer() {
    let t = TestServer::start().await;
    let dir = tokio::task::spawn_blocking(sdk_dir).await.unwrap();
    let base = t.url("/v1");
    let output = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .args(["-c", SCRIPT, &base])
            .env("PYTHONPATH", dir)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("sdk ok"),
        "{stdout}\n{stderr}"
    );
    t.server.shutdown().await;
}
