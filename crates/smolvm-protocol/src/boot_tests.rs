use super::*;

fn full() -> BootParams {
    BootParams {
        hostname: Some("vm-1".into()),
        ip: Some((Ipv4Addr::new(172, 16, 0, 2), 30)),
        gateway: Some(Ipv4Addr::new(172, 16, 0, 1)),
        dns: vec![Ipv4Addr::new(1, 1, 1, 1), Ipv4Addr::new(9, 9, 9, 9)],
        authorized_key: Some("ssh-ed25519 AAAAC3Nz test@host \"quoted\" = x".into()),
        power_mode: Some(PowerMode::Reboot),
        debug: true,
        ..BootParams::default()
    }
}

#[test]
fn render_then_parse_gives_the_same_parameters() {
    let cases = [
        full(),
        BootParams::default(),
        BootParams {
            hostname: Some("a".repeat(MAX_HOSTNAME_LEN)),
            ip: Some((Ipv4Addr::new(10, 0, 2, 15), 0)),
            power_mode: Some(PowerMode::PowerOff),
            authorized_key: Some("k".repeat(MAX_AUTHORIZED_KEY_LEN)),
            ..BootParams::default()
        },
    ];
    for p in cases {
        let line = p.render().unwrap();
        let back = BootParams::parse(&line);
        assert!(back.warnings.is_empty(), "{line}: {:?}", back.warnings);
        assert_eq!(back, p, "{line}");
        // No rendered value needs quoting: every token is one parameter.
        assert_eq!(
            tokens(&line).len(),
            line.split_whitespace().count(),
            "{line}"
        );
    }
}

#[test]
fn render_is_exactly_what_the_agent_always_read() {
    assert_eq!(
        full().render().unwrap(),
        "smolvm.hostname=vm-1 smolvm.ip=172.16.0.2/30 smolvm.gw=172.16.0.1 \
         smolvm.dns=1.1.1.1,9.9.9.9 \
         smolvm.authorized_key=c3NoLWVkMjU1MTkgQUFBQUMzTnogdGVzdEBob3N0ICJxdW90ZWQiID0geA== \
         smolvm.poweroff=reboot smolvm.debug"
    );
}

#[test]
fn render_refuses_what_the_agent_would_reject() {
    let bad = [
        BootParams {
            hostname: Some("a b".into()),
            ..BootParams::default()
        },
        BootParams {
            hostname: Some("x smolvm.ip=1.2.3.4/8".into()),
            ..BootParams::default()
        },
        BootParams {
            hostname: Some("a".repeat(MAX_HOSTNAME_LEN + 1)),
            ..BootParams::default()
        },
        BootParams {
            hostname: Some(String::new()),
            ..BootParams::default()
        },
        BootParams {
            ip: Some((Ipv4Addr::LOCALHOST, 33)),
            ..BootParams::default()
        },
        BootParams {
            authorized_key: Some("ssh-ed25519 A\nssh-rsa B".into()),
            ..BootParams::default()
        },
        BootParams {
            authorized_key: Some(String::new()),
            ..BootParams::default()
        },
        BootParams {
            authorized_key: Some("k".repeat(MAX_AUTHORIZED_KEY_LEN + 1)),
            ..BootParams::default()
        },
    ];
    for p in bad {
        assert!(p.render().is_err(), "{p:?}");
    }
}

#[test]
fn compose_joins_and_enforces_the_kernel_limit() {
    assert_eq!(
        compose(" console=ttyS0 init=/init ", "smolvm.hostname=a").unwrap(),
        "console=ttyS0 init=/init smolvm.hostname=a"
    );
    assert_eq!(compose("", "smolvm.debug").unwrap(), "smolvm.debug");
    assert_eq!(compose("ro", "").unwrap(), "ro");
    let long = "x".repeat(KERNEL_CMDLINE_MAX - "smolvm.debug".len() - 1);
    assert_eq!(
        compose(&long, "smolvm.debug").unwrap().len(),
        KERNEL_CMDLINE_MAX
    );
    let err = compose(&format!("{long}y"), "smolvm.debug").unwrap_err();
    assert!(
        err.to_string().contains("exceed the kernel's 2047"),
        "{err}"
    );
}

#[test]
fn tokens_follow_kernel_rules() {
    let t = tokens("console=ttyS0 ro  init=/init foo=\"a b\" \"x=y z\" -- ignored=1");
    assert_eq!(
        t,
        vec![
            ("console".into(), Some("ttyS0".into())),
            ("ro".into(), None),
            ("init".into(), Some("/init".into())),
            ("foo".into(), Some("a b".into())),
            ("x".into(), Some("y z".into())),
        ]
    );
    assert!(tokens("").is_empty());
    assert_eq!(tokens("a --"), vec![("a".into(), None)]);
}

#[test]
fn the_agent_runs_only_with_init_slash_init() {
    assert!(BootParams::parse("console=ttyS0 init=/init").runs_agent());
    assert!(BootParams::parse("init=\"/init\" rw").runs_agent());
    for line in [
        "console=ttyS0",
        "init=/sbin/init",
        "init=/init2",
        "rdinit=/init",
        "foo=init=/init",
        "-- init=/init",
    ] {
        assert!(!BootParams::parse(line).runs_agent(), "{line}");
    }
    // The last init= wins, as in the kernel.
    assert!(!BootParams::parse("init=/init init=/bin/sh").runs_agent());
}

#[test]
fn standard_and_smolvm_parameters_parse() {
    // "ssh-ed25519 AAAA test@host\n" in base64.
    let key = "c3NoLWVkMjU1MTkgQUFBQSB0ZXN0QGhvc3QK";
    let p = BootParams::parse(&format!(
        "console=ttyS0 init=/init smolvm.ip=172.16.0.2/30 smolvm.gw=172.16.0.1 \
         smolvm.hostname=vm-1 smolvm.dns=1.1.1.1,9.9.9.9 smolvm.authorized_key={key} rw\n"
    ));
    assert_eq!(p.init.as_deref(), Some("/init"));
    assert_eq!(p.ip, Some(("172.16.0.2".parse().unwrap(), 30)));
    assert_eq!(p.gateway, Some("172.16.0.1".parse().unwrap()));
    assert_eq!(p.hostname.as_deref(), Some("vm-1"));
    assert_eq!(p.dns.len(), 2);
    assert_eq!(
        p.authorized_key.as_deref(),
        Some("ssh-ed25519 AAAA test@host")
    );
    assert!(!p.read_only);
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
}

#[test]
fn bad_values_warn_and_are_ignored() {
    let p = BootParams::parse(
        "smolvm.ip=1.2.3.4/33 smolvm.gw=nope smolvm.hostname=-x smolvm.dns=1.2.3 \
         smolvm.authorized_key=!!! smolvm.poweroff=later smolvm.bogus=1 ro",
    );
    assert_eq!(p.ip, None);
    assert_eq!(p.gateway, None);
    assert_eq!(p.hostname, None);
    assert!(p.dns.is_empty());
    assert_eq!(p.authorized_key, None);
    assert_eq!(p.power_mode, None);
    assert_eq!(p.warnings.len(), 7, "{:?}", p.warnings);
    assert!(p.read_only);
    // A key line with an embedded newline is refused ("a\nb").
    assert_eq!(
        BootParams::parse("smolvm.authorized_key=YQpi").authorized_key,
        None
    );
}
