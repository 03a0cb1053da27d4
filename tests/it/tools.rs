//! The sandbox through the real API: tools calling mock APIs as two tenants and three users.

use serde_json::json;

use crate::support::tools::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_round_trips_through_the_api() {
    let h = ToolHarness::start().await;
    let (status, body) = h.invoke(&h.alice, "echo", json!({"hello": "world"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["output"], json!({"echo": {"hello": "world"}}));
    assert_eq!(body["denials"], json!([]));
    assert_eq!(body["invocation"].as_str().unwrap().len(), 32);
}
