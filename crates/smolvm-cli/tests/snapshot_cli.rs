//! `smolvm pause|resume`, `smolvm snapshot ...`, `smolvm create --from-snapshot` and `smolvm fork` as a
//! user runs them: argument and lookup errors without a VM, and (with `SMOLVM_E2E=1`, as root) one real
//! VM snapshotted, restored and forked by the CLI inside a network namespace the test creates and
//! removes.

mod cli_netns;
#[path = "../../smolvm/tests/netns_util/mod.rs"]
mod netns_util;

use std::process::Output;

use serde_json::Value;

use cli_netns::Dirs;
use netns_util::{e2e, Netns};

/// Private directories for this file's tests (`smvs...` under /tmp).
fn dirs() -> Dirs {
    Dirs::new("smvs")
}

fn fails(dirs: &Dirs, args: &[&str]) -> String {
    let out = dirs.smolvm(None, args);
    assert!(!out.status.success(), "{args:?} succeeded: {out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_names_and_missing_snapshots_are_reported_by_name() {
    let d = dirs();
    let err = fails(&d, &["snapshot", "info", "nope"]);
    assert!(err.contains("snapshot \"nope\" not found"), "{err}");
    let err = fails(&d, &["snapshot", "create", "some-vm", "Bad/Name"]);
    assert!(err.contains("snapshot name"), "{err}");
    let err = fails(&d, &["create", "--from-snapshot", "nope"]);
    assert!(err.contains("snapshot \"nope\" not found"), "{err}");
    let err = fails(&d, &["snapshot", "delete", "nope"]);
    assert!(err.contains("\"nope\""), "{err}");
    let err = fails(&d, &["fork", "some-vm", "-n", "0"]);
    assert!(err.contains("invalid n"), "{err}");
    let err = fails(&d, &["pause", "no-such-vm"]);
    assert!(err.contains("not found"), "{err}");
    let err = fails(&d, &["create", "--from-snapshot", "s", "--mem", "1024"]);
    assert!(err.contains("cannot be used with"), "{err}");
}

/// The CLI in one namespace; on drop deletes every VM and snapshot of its directories (a failed
/// assertion must not leave a QEMU behind). Declared after the namespace, so it drops first.
struct Cli<'a> {
    dirs: &'a Dirs,
    ns: &'a Netns,
}

impl Cli<'_> {
    fn out(&self, args: &[&str]) -> Output {
        self.dirs.smolvm(Some(self.ns), args)
    }
    fn ok(&self, args: &[&str]) -> String {
        let out = self.out(args);
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    }
    fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.ok(args)).unwrap()
    }
    fn ids(&self) -> Vec<String> {
        match self.json(&["list", "--json"]) {
            Value::Array(vms) => vms
                .iter()
                .map(|v| v["vm_id"].as_str().unwrap().to_string())
                .collect(),
            other => panic!("list --json: {other}"),
        }
    }
}

impl Drop for Cli<'_> {
    fn drop(&mut self) {
        for id in self.ids() {
            let _ = self.out(&["delete", &id]);
        }
        if let Ok(Value::Array(snaps)) =
            serde_json::from_str::<Value>(&self.ok(&["snapshot", "list", "--json"]))
        {
            for s in snaps {
                let _ = self.out(&["snapshot", "delete", s["name"].as_str().unwrap_or("")]);
            }
        }
    }
}

#[test]
fn pause_snapshot_restore_fork_end_to_end() {
    if !e2e(
        "the CLI snapshot end-to-end test",
        &["ip", "qemu-system-x86_64", "qemu-img", "mkfs.ext4"],
    ) {
        return;
    }
    let ns = Netns::new();
    let dirs = dirs();
    dirs.share_image_cache();
    let out = dirs.smolvm(None, &["image", "build"]);
    assert!(out.status.success(), "smolvm image build: {out:?}");
    let cli = Cli {
        dirs: &dirs,
        ns: &ns,
    };
    cli.ok(&[
        "create",
        "--id",
        "src",
        "--network",
        "tap",
        "--mem",
        "256",
        "--vcpus",
        "1",
        "--start",
        "--boot-timeout",
        "120",
    ]);
    cli.ok(&["exec", "src", "--", "sh", "-c", "echo warm > /root/state"]);

    assert_eq!(cli.json(&["pause", "src", "--json"])["status"], "paused");
    assert_eq!(cli.json(&["info", "src", "--json"])["status"], "paused");
    assert_eq!(cli.json(&["resume", "src", "--json"])["status"], "running");

    let snap = cli.json(&["snapshot", "create", "src", "base", "--json"]);
    assert_eq!(snap["name"], "base");
    assert_eq!(snap["source_vm"], "src");
    assert!(snap["size_bytes"].as_u64().unwrap() > 0);
    let info = cli.ok(&["snapshot", "info", "base"]);
    assert!(info.contains("source VM:   src"), "{info}");

    let c1 = cli.json(&["create", "--from-snapshot", "base", "--id", "c1", "--json"]);
    assert_eq!(c1["status"], "running");
    assert_eq!(cli.ok(&["exec", "c1", "--", "hostname"]).trim(), "c1");
    assert_eq!(
        cli.ok(&["exec", "c1", "--", "cat", "/root/state"]).trim(),
        "warm"
    );

    let forks = cli.json(&["fork", "src", "-n", "2", "--json"]);
    let forks = forks.as_array().unwrap();
    assert_eq!(forks.len(), 2);
    let mut ips = vec![c1["network"]["guest_ip"].as_str().unwrap().to_string()];
    for f in forks {
        let id = f["vm_id"].as_str().unwrap();
        assert_eq!(cli.ok(&["exec", id, "--", "hostname"]).trim(), id);
        ips.push(f["network"]["guest_ip"].as_str().unwrap().to_string());
    }
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 3, "every VM has its own address");

    let list = cli.json(&["snapshot", "list", "--json"]);
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(names.contains(&"base"));
    assert!(names.iter().any(|n| n.starts_with("src-fork-")));
    assert!(
        names.iter().any(|n| n.starts_with("tpl-")),
        "the first `create --start` of this shape made its template: {names:?}"
    );
    let refused = cli.out(&["snapshot", "delete", "base"]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("\"base\"") && err.contains("c1"), "{err}");

    for id in cli.ids() {
        cli.ok(&["delete", &id]);
    }

    // Templates: `image build --template` makes the default VM's template; default VMs start from it
    // unless --no-template.
    let out = dirs.smolvm(Some(&ns), &["image", "build", "--template"]);
    assert!(out.status.success(), "image build --template: {out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("template tpl-"), "{said}");
    let out = cli.out(&["create", "--id", "tc", "--start", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let tc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(tc["status"], "running");
    assert!(
        dirs.data().join("disks/tc.qcow2").exists(),
        "tc did not start from the template: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(cli.ok(&["exec", "tc", "--", "hostname"]).trim(), "tc");
    cli.ok(&[
        "create",
        "--id",
        "tn",
        "--network",
        "none",
        "--no-template",
        "--start",
    ]);
    assert!(dirs.data().join("disks/tn.ext4").exists());
    for id in cli.ids() {
        cli.ok(&["delete", &id]);
    }
    for s in cli
        .json(&["snapshot", "list", "--json"])
        .as_array()
        .unwrap()
    {
        cli.ok(&["snapshot", "delete", s["name"].as_str().unwrap()]);
    }
    assert_eq!(
        cli.json(&["snapshot", "list", "--json"]),
        Value::Array(vec![])
    );
    let disks: Vec<_> = std::fs::read_dir(dirs.data().join("disks"))
        .unwrap()
        .flatten()
        .collect();
    assert!(disks.is_empty(), "disks left: {disks:?}");
}
