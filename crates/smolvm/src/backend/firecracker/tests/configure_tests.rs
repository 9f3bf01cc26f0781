//! The configuration sequence for each kind of launch spec: exact requests and bodies, each checked
//! against the API definition, and where it stops when Firecracker refuses something.

use std::path::{Path, PathBuf};

use serde_json::json;

use super::fake_server::{FakeServer, Recorded, Reply};
use super::schema::Schema;
use crate::backend::firecracker::api::{LogLevel, Logger};
use crate::backend::firecracker::backend::configure;
use crate::backend::firecracker::{ApiClient, FirecrackerError, Method};
use crate::backend::{AgentEndpoint, LaunchSpec, NetAttachment};

/// A spec with every path under `dir`; no initrd, no network, read-write disk.
pub(super) fn base_spec(dir: &Path) -> LaunchSpec {
    LaunchSpec {
        vm_id: "vm-1".into(),
        vcpu_count: 2,
        mem_size_mib: 512,
        kernel: dir.join("vmlinux"),
        initrd: None,
        kernel_cmdline: "console=ttyS0 reboot=k panic=1 pci=off".into(),
        disk: dir.join("rootfs.ext4"),
        disk_read_only: false,
        net: None,
        control_socket: dir.join("vm-1.fc.sock"),
        agent: AgentEndpoint::FirecrackerVsock {
            uds_path: dir.join("vm-1.vsock"),
            port: 52,
        },
        console_log: dir.join("console.log"),
        vmm_log: dir.join("vmm.log"),
        store: None,
        cgroup_procs: Vec::new(),
        run_as: None,
    }
}

fn tap() -> NetAttachment {
    NetAttachment::Tap {
        tap: "smolvm-tap0".into(),
        mac: "06:00:ac:10:00:02".into(),
    }
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// Runs `configure` against an accepting server and returns what it received.
fn run(spec: &LaunchSpec, logger: Option<&Logger>) -> Vec<Recorded> {
    let server = FakeServer::accepting();
    let mut client = ApiClient::new(&server.socket);
    configure(&mut client, spec, logger).unwrap();
    let reqs = server.requests();
    // Every request matches the definition, carries correct framing, and one connection serves all.
    let schema = Schema::load();
    for r in &reqs {
        schema
            .check_request(&r.method, &r.path, &r.json())
            .unwrap_or_else(|e| panic!("{} {}: {e}", r.method, r.path));
        assert_eq!(r.header("host"), Some("localhost"));
        assert_eq!(
            r.header("content-length"),
            Some(r.body.len().to_string().as_str())
        );
        assert_eq!(r.conn, 0);
    }
    reqs
}

fn summary(reqs: &[Recorded]) -> Vec<(String, String, serde_json::Value)> {
    reqs.iter()
        .map(|r| (r.method.clone(), r.path.clone(), r.json()))
        .collect()
}

/// The expected sequence; `drive`, `net` and `boot` vary per spec.
fn expected(
    spec: &LaunchSpec,
    boot: serde_json::Value,
    drive: serde_json::Value,
    net: Option<serde_json::Value>,
) -> Vec<(String, String, serde_json::Value)> {
    let dir = spec.kernel.parent().unwrap();
    let put = |path: &str, body| ("PUT".to_string(), path.to_string(), body);
    let mut out = vec![
        put(
            "/machine-config",
            json!({ "vcpu_count": 2, "mem_size_mib": 512 }),
        ),
        put("/boot-source", boot),
        put("/drives/rootfs", drive),
    ];
    if let Some(net) = net {
        out.push(put("/network-interfaces/eth0", net));
    }
    out.push(put(
        "/vsock",
        json!({ "guest_cid": 3, "uds_path": s(&dir.join("vm-1.vsock")) }),
    ));
    out.push(put(
        "/serial",
        json!({ "serial_out_path": s(&dir.join("console.log")) }),
    ));
    out.push(put("/actions", json!({ "action_type": "InstanceStart" })));
    out
}

fn boot(spec: &LaunchSpec) -> serde_json::Value {
    json!({ "kernel_image_path": s(&spec.kernel), "boot_args": "console=ttyS0 reboot=k panic=1 pci=off" })
}

fn drive(spec: &LaunchSpec, read_only: bool) -> serde_json::Value {
    json!({ "drive_id": "rootfs", "path_on_host": s(&spec.disk), "is_root_device": true, "is_read_only": read_only })
}

#[test]
fn no_initrd_no_network() {
    let dir = PathBuf::from("/srv/vm");
    let spec = base_spec(&dir);
    assert_eq!(
        summary(&run(&spec, None)),
        expected(&spec, boot(&spec), drive(&spec, false), None)
    );
}

#[test]
fn with_initrd() {
    let dir = PathBuf::from("/srv/vm");
    let spec = LaunchSpec {
        initrd: Some(dir.join("initrd.cpio")),
        ..base_spec(&dir)
    };
    let mut b = boot(&spec);
    b["initrd_path"] = json!("/srv/vm/initrd.cpio");
    assert_eq!(
        summary(&run(&spec, None)),
        expected(&spec, b, drive(&spec, false), None)
    );
}

#[test]
fn read_only_disk() {
    let spec = LaunchSpec {
        disk_read_only: true,
        ..base_spec(Path::new("/srv/vm"))
    };
    assert_eq!(
        summary(&run(&spec, None)),
        expected(&spec, boot(&spec), drive(&spec, true), None)
    );
}

#[test]
fn tap_network() {
    let spec = LaunchSpec {
        net: Some(tap()),
        ..base_spec(Path::new("/srv/vm"))
    };
    let net = json!({ "iface_id": "eth0", "host_dev_name": "smolvm-tap0", "guest_mac": "06:00:ac:10:00:02" });
    assert_eq!(
        summary(&run(&spec, None)),
        expected(&spec, boot(&spec), drive(&spec, false), Some(net))
    );
}

#[test]
fn logger_goes_first_and_empty_cmdline_keeps_firecrackers_default() {
    let spec = LaunchSpec {
        kernel_cmdline: String::new(),
        ..base_spec(Path::new("/srv/vm"))
    };
    let logger = Logger {
        level: Some(LogLevel::Info),
        log_path: Some("/srv/vm/fc.log".into()),
        show_level: Some(true),
        ..Logger::default()
    };
    let got = summary(&run(&spec, Some(&logger)));
    assert_eq!(
        got[0],
        (
            "PUT".into(),
            "/logger".into(),
            json!({ "level": "Info", "log_path": "/srv/vm/fc.log", "show_level": true })
        )
    );
    assert_eq!(got[2].2, json!({ "kernel_image_path": "/srv/vm/vmlinux" }));
}

#[test]
fn user_networking_or_a_non_vsock_agent_is_refused_before_any_request() {
    let dir = Path::new("/srv/vm");
    let user = LaunchSpec {
        net: Some(NetAttachment::User {
            mac: "06:00:ac:10:00:02".into(),
            guest_ip: "10.0.2.15".parse().unwrap(),
            ssh_host_port: Some(2222),
        }),
        ..base_spec(dir)
    };
    let serial_agent = LaunchSpec {
        agent: AgentEndpoint::UnixSocket(dir.join("agent.sock")),
        ..base_spec(dir)
    };
    for (spec, want_net) in [(user, true), (serial_agent, false)] {
        let server = FakeServer::accepting();
        let err = configure(&mut ApiClient::new(&server.socket), &spec, None).unwrap_err();
        if want_net {
            assert!(
                matches!(err, FirecrackerError::UnsupportedNetwork),
                "{err:?}"
            );
            assert!(err.to_string().contains("QEMU-only"));
        } else {
            assert!(
                matches!(err, FirecrackerError::WrongAgentEndpoint { .. }),
                "{err:?}"
            );
        }
        assert!(server.requests().is_empty());
    }
}

#[test]
fn a_fault_stops_the_sequence_with_the_api_message() {
    let server = FakeServer::start(|r| {
        if r.path == "/boot-source" {
            Reply::fault(400, "Invalid kernel path: /srv/vm/vmlinux")
        } else {
            Reply::no_content()
        }
    });
    let err = configure(
        &mut ApiClient::new(&server.socket),
        &base_spec(Path::new("/srv/vm")),
        None,
    )
    .unwrap_err();
    match &err {
        FirecrackerError::Api {
            method: Method::Put,
            path,
            status: 400,
            fault_message,
        } => {
            assert_eq!(path, "/boot-source");
            assert_eq!(fault_message, "Invalid kernel path: /srv/vm/vmlinux");
        }
        other => panic!("unexpected {other:?}"),
    }
    let paths: Vec<String> = server.sequence().into_iter().map(|(_, p)| p).collect();
    assert_eq!(paths, ["/machine-config", "/boot-source"]);
}

#[test]
fn releases_without_serial_are_tolerated_but_other_serial_faults_are_not() {
    let old = FakeServer::start(|r| {
        if r.path == "/serial" {
            Reply::fault(400, "Invalid request method and/or path: PUT /serial")
        } else {
            Reply::no_content()
        }
    });
    configure(
        &mut ApiClient::new(&old.socket),
        &base_spec(Path::new("/srv/vm")),
        None,
    )
    .unwrap();
    assert_eq!(old.sequence().last().unwrap().1, "/actions");

    let failing = FakeServer::start(|r| {
        if r.path == "/serial" {
            Reply::fault(400, "Failed to open serial output file")
        } else {
            Reply::no_content()
        }
    });
    let err = configure(
        &mut ApiClient::new(&failing.socket),
        &base_spec(Path::new("/srv/vm")),
        None,
    )
    .unwrap_err();
    assert!(
        matches!(err, FirecrackerError::Api { status: 400, .. }),
        "{err:?}"
    );
    assert_eq!(failing.sequence().last().unwrap().1, "/serial");
}
