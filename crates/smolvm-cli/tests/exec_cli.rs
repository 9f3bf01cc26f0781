//! `smolvm exec`, `smolvm env` and `smolvm cp` as a user runs them: argument checks that need no VM, and
//! (with `SMOLVM_E2E=1`, as root) one real VM driven end to end by the CLI inside a network namespace the
//! test creates and removes.

mod cli_netns;
#[path = "../../smolvm/tests/netns_util/mod.rs"]
mod netns_util;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use cli_netns::Dirs;
use netns_util::{e2e, Netns};

/// Private directories for this file's tests (`smvc...` under /tmp).
fn dirs() -> Dirs {
    Dirs::new("smvc")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs a command that must fail; returns its stderr.
fn fails(dirs: &Dirs, args: &[&str]) -> (Option<i32>, String) {
    let out = dirs.smolvm(None, args);
    assert!(!out.status.success(), "{args:?} succeeded: {out:?}");
    assert!(out.stdout.is_empty(), "{args:?} printed {out:?}");
    (out.status.code(), stderr(&out))
}

#[test]
fn bad_env_keys_are_named_before_any_vm_is_looked_up() {
    let d = dirs();
    let (_, err) = fails(&d, &["env", "set", "no-such-vm", "OK=1", "1BAD=x"]);
    assert!(err.contains("\"1BAD\""), "{err}");
    let (_, err) = fails(&d, &["env", "set", "no-such-vm", "NOEQUALS"]);
    assert!(err.contains("KEY=VALUE"), "{err}");
    let (_, err) = fails(&d, &["env", "unset", "no-such-vm", "BAD-KEY"]);
    assert!(err.contains("\"BAD-KEY\""), "{err}");
    let (code, err) = fails(&d, &["exec", "no-such-vm", "--env", "2X=1", "--", "true"]);
    assert_eq!(code, Some(125), "{err}");
    assert!(err.contains("\"2X\""), "{err}");
}

#[test]
fn cp_needs_exactly_one_guest_side() {
    let d = dirs();
    let (_, err) = fails(&d, &["cp", "vm-a:/etc/hostname", "vm-b:/tmp/x"]);
    assert!(err.contains("both SRC and DST"), "{err}");
    let (_, err) = fails(&d, &["cp", "local-a", "./local:b"]);
    assert!(err.contains("neither SRC nor DST"), "{err}");
    let (_, err) = fails(&d, &["cp", "vm-a:relative/path", "."]);
    assert!(err.contains("absolute"), "{err}");
    let (_, err) = fails(&d, &["cp", "--mode", "600", "vm-a:/etc/hostname", "."]);
    assert!(err.contains("uploads only"), "{err}");
    let (_, err) = fails(&d, &["cp", "--mode", "rw", "x", "vm-a:/tmp/x"]);
    assert!(err.contains("octal"), "{err}");
}

#[test]
fn unknown_vm_is_not_found() {
    let d = dirs();
    let (code, err) = fails(&d, &["exec", "no-such-vm", "--", "true"]);
    assert_eq!(code, Some(125), "{err}");
    assert!(err.contains("not found"), "{err}");
    for args in [
        &["env", "list", "no-such-vm"][..],
        &["env", "set", "no-such-vm", "A=1"],
        &["env", "unset", "no-such-vm", "A"],
        &["cp", "no-such-vm:/etc/hostname", "."],
    ] {
        let (_, err) = fails(&d, args);
        assert!(err.contains("not found"), "{args:?}: {err}");
    }
    // A local source is checked before the VM: its problem is what gets reported.
    let (_, err) = fails(&d, &["cp", "/no/such/file", "no-such-vm:/tmp/x"]);
    assert!(err.contains("/no/such/file"), "{err}");
    let local = d.0.path().join("f");
    std::fs::write(&local, b"x").unwrap();
    let (_, err) = fails(&d, &["cp", local.to_str().unwrap(), "no-such-vm:/tmp/x"]);
    assert!(err.contains("not found"), "{err}");
}

#[test]
fn exec_needs_a_command() {
    let d = dirs();
    let out = d.smolvm(None, &["exec", "vm"]);
    assert_eq!(out.status.code(), Some(2), "clap usage error: {out:?}");
}

// ---------------------------------------------------------------------------------------------------
// End to end: one VM, driven only through the CLI.

const VM: &str = "cli-e2e";

/// The CLI bound to one namespace and directory set; deletes the test VM on drop (a failed assertion
/// must not leave a QEMU behind).
struct Cli<'a> {
    dirs: &'a Dirs,
    ns: &'a Netns,
}

impl Cli<'_> {
    fn cmd(&self, args: &[&str]) -> Command {
        self.dirs.cmd(Some(self.ns), args)
    }

    fn out(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// Runs with `input` on stdin.
    fn out_with_stdin(&self, args: &[&str], input: &[u8]) -> Output {
        let mut child = self
            .cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let input = input.to_vec();
        let writer = std::thread::spawn(move || stdin.write_all(&input));
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap().unwrap();
        out
    }

    /// Runs a command that must succeed; returns its stdout.
    fn ok(&self, args: &[&str]) -> Vec<u8> {
        let out = self.out(args);
        assert!(out.status.success(), "{args:?}: {out:?}");
        out.stdout
    }

    fn ok_text(&self, args: &[&str]) -> String {
        String::from_utf8(self.ok(args)).unwrap()
    }

    fn spawn(&self, args: &[&str]) -> Child {
        self.cmd(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    fn env_json(&self) -> serde_json::Map<String, serde_json::Value> {
        let out = self.ok(&["env", "list", VM, "--json"]);
        match serde_json::from_slice(&out) {
            Ok(serde_json::Value::Object(m)) => m,
            other => panic!("env list --json: {other:?}"),
        }
    }
}

impl Drop for Cli<'_> {
    fn drop(&mut self) {
        let _ = self.cmd(&["delete", VM]).output();
    }
}

/// Hex SHA-256 of a host file, by the host's `sha256sum`.
fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success(), "sha256sum {path:?}");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn random_file(path: &Path, len: u64) {
    let mut data = Vec::new();
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .take(len)
        .read_to_end(&mut data)
        .unwrap();
    std::fs::write(path, data).unwrap();
}

#[test]
fn exec_env_cp_end_to_end() {
    if !e2e(
        "the CLI exec/env/cp end-to-end test",
        &["ip", "qemu-system-x86_64", "mkfs.ext4", "sha256sum"],
    ) {
        return;
    }
    let ns = Netns::new();
    let dirs = dirs();
    dirs.share_image_cache();
    // The image build may fetch the kernel package (apt), which the namespace cannot reach: build (or
    // find it cached) out here, so `create` inside only boots it.
    let out = dirs.smolvm(None, &["image", "build"]);
    assert!(out.status.success(), "smolvm image build: {out:?}");
    let cli = Cli {
        dirs: &dirs,
        ns: &ns,
    };
    cli.ok(&[
        "create",
        "--id",
        VM,
        "--network",
        "none",
        "--mem",
        "256",
        "--vcpus",
        "1",
        "--start",
        "--boot-timeout",
        "120",
    ]);
    check_exec(&cli);
    check_env(&cli);
    check_cp(&cli, &dirs);
    cli.ok(&["delete", VM]);
    let out = cli.out(&["exec", VM, "--", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("not found"), "{out:?}");
}

fn check_exec(cli: &Cli) {
    // Exit status and the two streams come through separately.
    let out = cli.out(&[
        "exec",
        VM,
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 7",
    ]);
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(stderr(&out), "err\n");

    // Output streams: the first line arrives while the command still runs. Meanwhile other `smolvm
    // exec` processes use the same VM (the VM's channel owner serves them all). Killing the CLI then
    // closes its agent connection, and the guest kills the command.
    let mut child = cli.spawn(&["exec", VM, "--", "sh", "-c", "echo first; exec sleep 86400"]);
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, "first\n");
    assert!(
        child.try_wait().unwrap().is_none(),
        "exec ended before the guest command could: output was not streamed"
    );
    assert_eq!(
        cli.ok_text(&["exec", VM, "--", "echo", "beside"]),
        "beside\n"
    );
    check_concurrent_execs(cli);
    child.kill().unwrap();
    child.wait().unwrap();
    let procs = cli.ok_text(&[
        "exec",
        VM,
        "--shell",
        "--",
        "for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < $f; echo; done",
    ]);
    assert!(
        !procs.contains("sleep 86400"),
        "the command outlived its exec: {procs}"
    );

    // Several MiB of binary output arrive intact.
    let sum = cli.ok_text(&[
        "exec",
        VM,
        "--shell",
        "--",
        "head -c 4194304 /dev/urandom > /tmp/big && sha256sum /tmp/big",
    ]);
    let big = cli.ok(&["exec", VM, "--", "cat", "/tmp/big"]);
    assert_eq!(big.len(), 4 << 20);
    let local = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(local.path(), &big).unwrap();
    assert_eq!(
        sum.split_whitespace().next(),
        Some(sha256(local.path()).as_str())
    );

    // Options.
    assert_eq!(
        cli.ok_text(&["exec", VM, "--cwd", "/tmp", "--", "pwd"]),
        "/tmp\n"
    );
    assert_eq!(
        cli.ok_text(&[
            "exec",
            VM,
            "-e",
            "A=x 'y' $(z)",
            "--",
            "sh",
            "-c",
            "printf %s \"$A\""
        ]),
        "x 'y' $(z)"
    );
    assert_eq!(
        cli.ok_text(&["exec", VM, "--shell", "--", "echo", "$((6*7))", "|", "cat"]),
        "42\n"
    );
    // Argv mode passes words verbatim: nothing is expanded.
    assert_eq!(
        cli.ok_text(&["exec", VM, "--", "echo", "$HOME", "*"]),
        "$HOME *\n"
    );
    let bytes: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    let out = cli.out_with_stdin(&["exec", VM, "-i", "--", "cat"], &bytes);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, bytes, "stdin round trip");

    // smolvm's own statuses: timeout, signal, missing program.
    let out = cli.out(&["exec", VM, "--timeout", "2", "--", "sleep", "60"]);
    assert_eq!(out.status.code(), Some(124), "{out:?}");
    assert!(stderr(&out).contains("timed out"), "{out:?}");
    let out = cli.out(&["exec", VM, "--", "sh", "-c", "kill -KILL $$"]);
    assert_eq!(out.status.code(), Some(128 + 9), "{out:?}");
    let out = cli.out(&["exec", VM, "--", "/no/such/program"]);
    assert_eq!(out.status.code(), Some(127), "{out:?}");
    assert!(stderr(&out).contains("/no/such/program"), "{out:?}");
}

/// Eight `smolvm exec` processes started together on one VM all succeed, each with exactly its own
/// output (hundreds of numbered lines each, written while the others write theirs).
fn check_concurrent_execs(cli: &Cli) {
    let script =
        |n: usize| format!("i=1; while [ $i -le 300 ]; do echo p{n}-$i; i=$((i+1)); done; sleep 1");
    let children: Vec<(usize, Child)> = (0..8)
        .map(|n| (n, cli.spawn(&["exec", VM, "--", "sh", "-c", &script(n)])))
        .collect();
    for (n, child) in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "concurrent exec {n}: {out:?}");
        let want: String = (1..=300).map(|i| format!("p{n}-{i}\n")).collect();
        assert!(
            out.stdout == want.as_bytes(),
            "concurrent exec {n} got other output"
        );
    }
}

fn check_env(cli: &Cli) {
    let awkward = "it's \"$(touch /tmp/pwned)\" `touch /tmp/pwned` \\ $HOME\nline 2\ttab ünï ☃";
    let q = format!("Q={awkward}");
    cli.ok(&["env", "set", VM, &q, "EMPTY=", "EQ=a=b=c", "LEAD=-x"]);
    let vars = cli.env_json();
    for (k, v) in [
        ("Q", awkward),
        ("EMPTY", ""),
        ("EQ", "a=b=c"),
        ("LEAD", "-x"),
    ] {
        assert_eq!(
            vars.get(k).and_then(|v| v.as_str()),
            Some(v),
            "{k}: {vars:?}"
        );
    }
    // Seen verbatim by shell and argv commands alike, and never executed.
    let via_shell = cli.ok_text(&["exec", VM, "--shell", "--", "printf %s \"$Q\""]);
    assert_eq!(via_shell, awkward);
    let via_argv = cli.ok_text(&["exec", VM, "--", "sh", "-c", "printf %s \"$Q\""]);
    assert_eq!(via_argv, awkward);
    let out = cli.out(&["exec", VM, "--", "test", "-e", "/tmp/pwned"]);
    assert_eq!(out.status.code(), Some(1), "a value was executed: {out:?}");
    let text = cli.ok_text(&["env", "list", VM]);
    assert!(text.contains("EMPTY=''\n"), "{text}");
    assert!(text.contains("EQ=a=b=c\n"), "{text}");

    // A bad key changes nothing.
    let out = cli.out(&["env", "set", VM, "GOOD=1", "BAD KEY=2"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("\"BAD KEY\""), "{out:?}");
    assert!(!cli.env_json().contains_key("GOOD"));

    cli.ok(&["env", "unset", VM, "Q", "EMPTY", "NEVER_SET"]);
    let vars = cli.env_json();
    assert!(
        !vars.contains_key("Q") && !vars.contains_key("EMPTY"),
        "{vars:?}"
    );
    assert_eq!(vars.get("EQ").and_then(|v| v.as_str()), Some("a=b=c"));
    assert_eq!(
        cli.ok_text(&["exec", VM, "--shell", "--", "printf %s \"${Q-unset}\""]),
        "unset"
    );
}

fn check_cp(cli: &Cli, dirs: &Dirs) {
    let work = dirs.0.path().join("cp");
    std::fs::create_dir(&work).unwrap();
    let src = work.join("data.bin");
    random_file(&src, (3 << 20) + 17);
    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o640)).unwrap();
    let want = sha256(&src);
    let guest_sha = |path: &str| {
        let out = cli.ok_text(&["exec", VM, "--", "sha256sum", path]);
        out.split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string()
    };
    let guest_mode = |path: &str| cli.ok_text(&["exec", VM, "--", "stat", "-c", "%a", path]);

    // Upload: parents are created, the local mode is kept unless --mode says otherwise.
    cli.ok(&[
        "cp",
        src.to_str().unwrap(),
        &format!("{VM}:/tmp/up/one.bin"),
    ]);
    assert_eq!(guest_sha("/tmp/up/one.bin"), want);
    assert_eq!(guest_mode("/tmp/up/one.bin"), "640\n");
    // Into a directory: with a trailing slash, or an existing guest directory without one.
    cli.ok(&[
        "cp",
        "--mode",
        "600",
        src.to_str().unwrap(),
        &format!("{VM}:/tmp/up/"),
    ]);
    assert_eq!(guest_sha("/tmp/up/data.bin"), want);
    assert_eq!(guest_mode("/tmp/up/data.bin"), "600\n");
    cli.ok(&["exec", VM, "--", "mkdir", "/tmp/dir"]);
    cli.ok(&["cp", src.to_str().unwrap(), &format!("{VM}:/tmp/dir")]);
    assert_eq!(guest_sha("/tmp/dir/data.bin"), want);

    // Download: to a file name, and into a directory.
    let down = work.join("down.bin");
    cli.ok(&[
        "cp",
        &format!("{VM}:/tmp/up/one.bin"),
        down.to_str().unwrap(),
    ]);
    assert_eq!(sha256(&down), want);
    assert_eq!(std::fs::read(&down).unwrap(), std::fs::read(&src).unwrap());
    let into = work.join("into");
    std::fs::create_dir(&into).unwrap();
    cli.ok(&[
        "cp",
        &format!("{VM}:/tmp/up/data.bin"),
        into.to_str().unwrap(),
    ]);
    let got = into.join("data.bin");
    assert_eq!(sha256(&got), want);
    assert_eq!(
        std::fs::metadata(&got).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // A missing guest file fails and leaves nothing behind.
    let missing = work.join("missing.bin");
    let out = cli.out(&[
        "cp",
        &format!("{VM}:/no/such/file"),
        missing.to_str().unwrap(),
    ]);
    assert!(!out.status.success(), "{out:?}");
    assert!(stderr(&out).contains("/no/such/file"), "{out:?}");
    assert!(!missing.exists());
    let leftovers: Vec<_> = std::fs::read_dir(&work)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().contains("smolvm-download"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
