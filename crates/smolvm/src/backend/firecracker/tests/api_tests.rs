//! The typed bodies against the API definition: every field set and every field left out, enum values
//! exactly as the schema spells them, and unknown fields refused.

use serde::Serialize;
use serde_json::json;

use super::schema::Schema;
use crate::backend::firecracker::api::*;

/// Serializes `body` and checks it against the definition of `R::METHOD r.path()`.
fn check<R: ApiRequest>(schema: &Schema, body: &R, definition: &str) -> serde_json::Value {
    let value = serde_json::to_value(body).unwrap();
    let name = schema
        .check_request(R::METHOD.as_str(), &body.path(), &value)
        .unwrap_or_else(|e| panic!("{} {}: {e}", R::METHOD, body.path()));
    assert_eq!(name, definition);
    value
}

fn names<T: Serialize>(values: &[T]) -> Vec<String> {
    values
        .iter()
        .map(|v| {
            serde_json::to_value(v)
                .unwrap()
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

fn bucket() -> TokenBucket {
    TokenBucket {
        size: 1 << 20,
        one_time_burst: Some(4096),
        refill_time: 1000,
    }
}

#[test]
fn minimal_bodies_match_the_schema_and_skip_none() {
    let s = Schema::load();
    let v = check(
        &s,
        &BootSource {
            kernel_image_path: "/k".into(),
            initrd_path: None,
            boot_args: None,
        },
        "BootSource",
    );
    assert_eq!(v, json!({ "kernel_image_path": "/k" }));
    let v = check(
        &s,
        &MachineConfiguration {
            vcpu_count: 1,
            mem_size_mib: 128,
            smt: None,
            track_dirty_pages: None,
            huge_pages: None,
        },
        "MachineConfiguration",
    );
    assert_eq!(v, json!({ "vcpu_count": 1, "mem_size_mib": 128 }));
    let v = check(
        &s,
        &Drive::virtio_block("rootfs", "/d", true, false),
        "Drive",
    );
    assert_eq!(
        v,
        json!({ "drive_id": "rootfs", "path_on_host": "/d", "is_root_device": true, "is_read_only": false })
    );
    let v = check(&s, &Logger::default(), "Logger");
    assert_eq!(v, json!({}));
    let v = check(
        &s,
        &InstanceActionInfo::new(ActionType::InstanceStart),
        "InstanceActionInfo",
    );
    assert_eq!(v, json!({ "action_type": "InstanceStart" }));
}

#[test]
fn full_bodies_match_the_schema() {
    let s = Schema::load();
    check(
        &s,
        &BootSource {
            kernel_image_path: "/k".into(),
            initrd_path: Some("/i".into()),
            boot_args: Some("console=ttyS0".into()),
        },
        "BootSource",
    );
    check(
        &s,
        &MachineConfiguration {
            vcpu_count: 32,
            mem_size_mib: 4096,
            smt: Some(true),
            track_dirty_pages: Some(true),
            huge_pages: Some(HugePages::TwoMiB),
        },
        "MachineConfiguration",
    );
    check(
        &s,
        &Drive {
            partuuid: Some("0eaa91a0-01".into()),
            cache_type: Some(CacheType::Writeback),
            io_engine: Some(IoEngine::Async),
            rate_limiter: Some(RateLimiter {
                bandwidth: Some(bucket()),
                ops: Some(bucket()),
            }),
            ..Drive::virtio_block("data_1", "/d", false, true)
        },
        "Drive",
    );
    check(
        &s,
        &NetworkInterface {
            iface_id: "eth0".into(),
            host_dev_name: "tap0".into(),
            guest_mac: Some("06:00:ac:10:00:02".into()),
            mtu: Some(1500),
            rx_rate_limiter: Some(RateLimiter {
                bandwidth: Some(bucket()),
                ops: None,
            }),
            tx_rate_limiter: Some(RateLimiter {
                bandwidth: None,
                ops: Some(bucket()),
            }),
        },
        "NetworkInterface",
    );
    check(
        &s,
        &Vsock {
            guest_cid: 3,
            uds_path: "/v.sock".into(),
        },
        "Vsock",
    );
    check(
        &s,
        &Logger {
            level: Some(LogLevel::Debug),
            log_path: Some("/log".into()),
            show_level: Some(true),
            show_log_origin: Some(false),
            module: Some("api_server::request".into()),
        },
        "Logger",
    );
    check(
        &s,
        &SerialDevice {
            serial_out_path: Some("/console".into()),
            rate_limiter: Some(bucket()),
        },
        "SerialDevice",
    );
}

#[test]
fn enums_are_spelled_as_in_the_schema() {
    let s = Schema::load();
    assert_eq!(
        names(&[
            ActionType::FlushMetrics,
            ActionType::InstanceStart,
            ActionType::SendCtrlAltDel
        ]),
        s.enum_values("InstanceActionInfo", Some("action_type"))
    );
    use LogLevel::*;
    assert_eq!(
        names(&[Error, Warning, Info, Debug, Trace, Off]),
        s.enum_values("Logger", Some("level"))
    );
    assert_eq!(
        names(&[HugePages::None, HugePages::TwoMiB]),
        s.enum_values("MachineConfiguration", Some("huge_pages"))
    );
    assert_eq!(
        names(&[CacheType::Unsafe, CacheType::Writeback]),
        s.enum_values("Drive", Some("cache_type"))
    );
    assert_eq!(
        names(&[IoEngine::Sync, IoEngine::Async]),
        s.enum_values("Drive", Some("io_engine"))
    );
}

#[test]
fn the_checker_rejects_what_firecracker_would() {
    let s = Schema::load();
    let bad = [
        ("PUT", "/boot-source", json!({ "boot_args": "x" })), // required kernel_image_path
        ("PUT", "/boot-source", json!({ "kernel_image_path": 1 })), // wrong type
        (
            "PUT",
            "/machine-config",
            json!({ "vcpu_count": 33, "mem_size_mib": 1 }),
        ), // maximum
        (
            "PUT",
            "/machine-config",
            json!({ "vcpu_count": 1, "mem_size_mib": 1, "x": 1 }),
        ), // unknown
        ("PUT", "/actions", json!({ "action_type": "Reboot" })), // enum
        ("PUT", "/vsock", json!({ "guest_cid": 2, "uds_path": "/v" })), // minimum
        ("PUT", "/drives", json!({})),                        // no such path
        (
            "POST",
            "/actions",
            json!({ "action_type": "InstanceStart" }),
        ), // no such method
        (
            "PUT",
            "/drives/x",
            json!({ "drive_id": "x", "is_root_device": true, "rate_limiter": { "ops": { "size": 1 } } }),
        ), // nested required refill_time
    ];
    for (method, path, body) in bad {
        assert!(
            s.check_request(method, path, &body).is_err(),
            "{method} {path} {body} should be rejected"
        );
    }
}

#[test]
fn unknown_fields_are_refused_when_decoding() {
    let r: Result<BootSource, _> =
        serde_json::from_value(json!({ "kernel_image_path": "/k", "bogus": true }));
    assert!(r.is_err());
    let r: Result<Drive, _> = serde_json::from_value(
        json!({ "drive_id": "a", "is_root_device": false, "is_read_only": true, "path_on_host": "/x", "extra": 1 }),
    );
    assert!(r.is_err());
}

#[test]
fn paths_follow_the_spec() {
    assert_eq!(
        Drive::virtio_block("rootfs", "/d", true, true).path(),
        "/drives/rootfs"
    );
    let nic = NetworkInterface {
        iface_id: "eth0".into(),
        host_dev_name: "tap0".into(),
        guest_mac: None,
        mtu: None,
        rx_rate_limiter: None,
        tx_rate_limiter: None,
    };
    assert_eq!(nic.path(), "/network-interfaces/eth0");
    assert_eq!(Logger::default().path(), "/logger");
}

#[test]
fn response_types_match_their_definitions() {
    let s = Schema::load();
    let info = InstanceInfo {
        app_name: "Firecracker".into(),
        id: "vm-1".into(),
        state: "Not started".into(),
        vmm_version: "1.16.1".into(),
    };
    s.check_definition("InstanceInfo", &serde_json::to_value(&info).unwrap())
        .unwrap();
    let version = FirecrackerVersion {
        firecracker_version: "1.16.1".into(),
    };
    s.check_definition(
        "FirecrackerVersion",
        &serde_json::to_value(&version).unwrap(),
    )
    .unwrap();
    // The fault body the client reads.
    s.check_definition("Error", &json!({ "fault_message": "x" }))
        .unwrap();
}
