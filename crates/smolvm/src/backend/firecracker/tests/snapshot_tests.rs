//! Pause, resume, snapshot create and load: exact requests against the fake API server, every body
//! checked against the API definition.

use std::path::Path;

use serde_json::json;

use super::configure_tests::base_spec;
use super::fake_server::{FakeServer, Reply};
use super::schema::Schema;
use crate::backend::firecracker::snapshot::{create_params, load, load_params};
use crate::backend::firecracker::{ApiClient, FirecrackerBackend};
use crate::backend::{Backend, NetAttachment};

fn check_all(server: &FakeServer) {
    let schema = Schema::load();
    for r in server.requests() {
        schema
            .check_request(&r.method, &r.path, &r.json())
            .unwrap_or_else(|e| panic!("{} {}: {e}", r.method, r.path));
    }
}

#[test]
fn pause_and_resume_patch_the_vm_state() {
    let server = FakeServer::accepting();
    let b = FirecrackerBackend::new("/nonexistent/firecracker");
    b.pause(&server.socket).unwrap();
    b.resume(&server.socket).unwrap();
    let reqs = server.requests();
    assert_eq!(
        server.sequence(),
        [
            ("PATCH".to_string(), "/vm".to_string()),
            ("PATCH".to_string(), "/vm".to_string())
        ]
    );
    assert_eq!(reqs[0].json(), json!({"state": "Paused"}));
    assert_eq!(reqs[1].json(), json!({"state": "Resumed"}));
    check_all(&server);
}

#[test]
fn snapshot_create_writes_memory_and_state_into_the_directory() {
    let server = FakeServer::accepting();
    let b = FirecrackerBackend::new("/nonexistent/firecracker");
    b.save_state(&server.socket, Path::new("/data/snapshots/s1"))
        .unwrap();
    let reqs = server.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(
        (reqs[0].method.as_str(), reqs[0].path.as_str()),
        ("PUT", "/snapshot/create")
    );
    assert_eq!(
        reqs[0].json(),
        json!({
            "mem_file_path": "/data/snapshots/s1/memory",
            "snapshot_path": "/data/snapshots/s1/vmstate",
            "snapshot_type": "Full"
        })
    );
    assert_eq!(
        serde_json::to_value(create_params(Path::new("/x"))).unwrap()["snapshot_type"],
        "Full"
    );
    check_all(&server);
}

#[test]
fn snapshot_load_overrides_tap_and_vsock_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = base_spec(dir.path());
    spec.net = Some(NetAttachment::Tap {
        tap: "smv-172-16-0-9".into(),
        mac: "06:00:ac:10:00:09".into(),
    });
    let server = FakeServer::accepting();
    let mut client = ApiClient::new(&server.socket);
    load(&mut client, &spec, Path::new("/data/snapshots/s1")).unwrap();
    let reqs = server.requests();
    assert_eq!(
        (reqs[0].method.as_str(), reqs[0].path.as_str()),
        ("PUT", "/snapshot/load")
    );
    assert_eq!(
        reqs[0].json(),
        json!({
            "snapshot_path": "/data/snapshots/s1/vmstate",
            "mem_backend": {"backend_type": "File", "backend_path": "/data/snapshots/s1/memory"},
            "resume_vm": true,
            "network_overrides": [{"iface_id": "eth0", "host_dev_name": "smv-172-16-0-9"}],
            "vsock_override": {"uds_path": spec.agent.path().to_str().unwrap()},
            "clock_realtime": true
        })
    );
    check_all(&server);
    // Without a network there is no override at all (an empty array is not sent).
    spec.net = None;
    let v = serde_json::to_value(load_params(&spec, Path::new("/s"))).unwrap();
    assert!(v.get("network_overrides").is_none());
}

#[test]
fn a_refused_load_is_an_error_with_firecrackers_message() {
    let server = FakeServer::start(|_| Reply::fault(400, "Snapshot version mismatch"));
    let dir = tempfile::tempdir().unwrap();
    let spec = base_spec(dir.path());
    let mut client = ApiClient::new(&server.socket);
    let err = load(&mut client, &spec, Path::new("/s")).unwrap_err();
    let mut text = err.to_string();
    let mut cur = std::error::Error::source(&err);
    while let Some(c) = cur {
        text.push_str(&format!(": {c}"));
        cur = c.source();
    }
    assert!(text.contains("Snapshot version mismatch"), "{text}");
}
