//! Persisted env vars: exact list, and a profile script that a real login shell sources to exactly the
//! values set, with nothing executed.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use smolvm::{ExecError, ExecRequest};

use super::{harness, path_str};

fn awkward() -> BTreeMap<String, String> {
    let values = [
        "",
        "plain",
        "it's",
        "'",
        "''",
        "\"double\"",
        "$(touch /tmp/smolvm-env-pwned)",
        "`touch /tmp/smolvm-env-pwned`",
        "${HOME}",
        "back\\slash\\",
        "new\nline\n",
        "tab\tspace  ",
        "; && || | & > <",
        "* ? [a] ~",
        "#x",
        "émoji 🚀",
        "\u{1}\u{7f}\u{1b}[0m",
        "a'b\"c`d$e\\f\ng",
        "-n",
    ];
    values
        .iter()
        .enumerate()
        .map(|(i, v)| (format!("V_{i}"), v.to_string()))
        .collect()
}

/// Sources `profile` in a real login shell (`<shell> -lc`, HOME pointing at a .profile that sources it)
/// and prints `key`.
fn through_login_shell(shell: &[&str], home: &std::path::Path, key: &str) -> Vec<u8> {
    let out = Command::new(shell[0])
        .args(&shell[1..])
        .arg("-lc")
        .arg(format!("printf %s \"${key}\""))
        .env_clear()
        .env("HOME", home)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    out.stdout
}

#[test]
fn awkward_values_round_trip_through_sh_lc() {
    let h = harness();
    let vars = awkward();
    h.client.set_env_vars(&vars).unwrap();
    assert_eq!(h.client.list_env_vars().unwrap(), vars);
    let home = h.dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    std::fs::write(
        home.join(".profile"),
        format!(". '{}'\n", path_str(&h.config.profile_path)),
    )
    .unwrap();
    let mut shells: Vec<Vec<&str>> = vec![vec!["/bin/sh"]];
    if std::path::Path::new("/bin/busybox").exists() {
        shells.push(vec!["/bin/busybox", "sh"]);
    }
    for shell in &shells {
        for (k, v) in &vars {
            assert_eq!(
                through_login_shell(shell, &home, k),
                v.as_bytes(),
                "{shell:?} {k}"
            );
        }
    }
    // Commands run by the agent see them too (argv and shell).
    for (k, v) in &vars {
        let r = h
            .client
            .exec_raw(&ExecRequest::shell(format!("printf %s \"${k}\"")))
            .unwrap();
        assert_eq!(r.stdout, v.as_bytes(), "{k}");
    }
    assert!(!std::path::Path::new("/tmp/smolvm-env-pwned").exists());
    let mode = std::fs::metadata(&h.config.profile_path)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o644);
    // No temp files left beside either file.
    for f in [&h.config.profile_path, &h.config.env_json_path] {
        let n = std::fs::read_dir(f.parent().unwrap()).unwrap().count();
        assert_eq!(n, 1, "{}", f.display());
    }
}

#[test]
fn set_replaces_and_unset_removes() {
    let h = harness();
    assert!(h.client.list_env_vars().unwrap().is_empty());
    let mut vars = BTreeMap::from([
        ("A".to_string(), "1".to_string()),
        ("B".to_string(), "2".to_string()),
    ]);
    h.client.set_env_vars(&vars).unwrap();
    h.client
        .set_env_vars(&BTreeMap::from([("A".to_string(), "3".to_string())]))
        .unwrap();
    vars.insert("A".into(), "3".into());
    assert_eq!(h.client.list_env_vars().unwrap(), vars);
    h.client
        .unset_env_vars(&["A".to_string(), "NOT_SET".to_string()])
        .unwrap();
    vars.remove("A");
    assert_eq!(h.client.list_env_vars().unwrap(), vars);
    let profile = std::fs::read_to_string(&h.config.profile_path).unwrap();
    assert!(profile.contains("export B='2'\n"));
    assert!(!profile.contains("export A="));
    assert_eq!(h.client.run("echo $B", None).unwrap().output(), "2");
}

#[test]
fn concurrent_sets_lose_nothing() {
    let h = harness();
    std::thread::scope(|s| {
        for i in 0..8 {
            let client = &h.client;
            s.spawn(move || {
                client
                    .set_env_vars(&BTreeMap::from([(format!("K{i}"), i.to_string())]))
                    .unwrap()
            });
        }
    });
    assert_eq!(h.client.list_env_vars().unwrap().len(), 8);
}

#[test]
fn bad_keys_and_values_are_refused() {
    let h = harness();
    for (k, v) in [
        ("1BAD", "x".to_string()),
        ("A-B", "x".to_string()),
        ("A", "nul\0byte".to_string()),
        (
            "BIG",
            "x".repeat(smolvm_protocol::limits::MAX_ENV_VALUE_LEN + 1),
        ),
    ] {
        match h.client.set_env_vars(&BTreeMap::from([(k.to_string(), v)])) {
            Err(ExecError::InvalidRequest(_)) => {}
            other => panic!("{k}: {other:?}"),
        }
    }
    let e: smolvm::Error = h
        .client
        .unset_env_vars(&["no good".to_string()])
        .unwrap_err()
        .into();
    assert_eq!(e.kind(), "validation");
    assert!(h.client.list_env_vars().unwrap().is_empty());
}

#[test]
fn many_large_values_are_sent_in_batches() {
    let h = harness();
    // 20 values of 100 KiB: more than one frame's worth.
    let vars: BTreeMap<String, String> = (0..20)
        .map(|i| (format!("L{i}"), "v".repeat(100 * 1024)))
        .collect();
    h.client.set_env_vars(&vars).unwrap();
    assert_eq!(h.client.list_env_vars().unwrap(), vars);
}
