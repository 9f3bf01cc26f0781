//! `wget` of the default image: busybox's applet behind a front end that handles `-T SEC` itself.
//!
//! Why: Debian 12's busybox (both `busybox` and `busybox-static`, 1.35.0) is built without
//! `FEATURE_WGET_TIMEOUT`, yet wget's option string still declares `T:+`. Busybox's `getopt32` then
//! stores the parsed number through the null pointer it was given for that option: `wget -T 5 URL`
//! dies with SIGSEGV before it opens a socket (kernel log: `segfault at 0 ... error 6 in busybox`,
//! `mov %ecx,(%rax)` in getopt32's numeric-argument path; string options are checked for null there,
//! numeric ones are not). Every other wget option works.
//!
//! The front end (the image links `/usr/bin/wget` to this binary) removes `-T SEC`, `-TSEC`,
//! `--timeout=SEC` and `--timeout SEC` (also inside bundles such as `-qT5`) and runs
//! `/bin/busybox wget` with the remaining arguments unchanged. With a timeout it bounds the whole
//! download: busybox has no idle timeout to hand it to, so the child is killed after SEC seconds and
//! the front end exits 1 with `wget: download timed out` (what busybox's own timeout prints). Without
//! one it simply execs busybox.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

/// The busybox binary of the image.
const BUSYBOX: &str = "/bin/busybox";

/// Short options of busybox 1.35 wget that take an argument (`-O FILE`, ...): their argument may
/// look like an option and must be passed through untouched.
const SHORT_WITH_ARG: &[u8] = b"OoPYUt";
/// Long options that take a separate argument.
const LONG_WITH_ARG: &[&str] = &[
    "--output-document",
    "--output-file",
    "--directory-prefix",
    "--proxy",
    "--user-agent",
    "--tries",
    "--header",
    "--post-data",
    "--post-file",
];

/// Result of splitting the command line.
#[derive(Debug, PartialEq, Eq)]
pub struct Split {
    /// Arguments for busybox's wget, in order.
    pub args: Vec<OsString>,
    /// The requested timeout in seconds (the last one given wins, like getopt).
    pub timeout: Option<u64>,
}

/// Removes the timeout options from `args` (without argv\[0\]). An invalid or missing timeout value is
/// an error message in busybox's words.
pub fn split(args: Vec<OsString>) -> Result<Split, String> {
    let mut out = Vec::new();
    let mut timeout = None;
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let b = a.as_bytes();
        if b == b"--" {
            out.push(a);
            out.extend(it.by_ref());
            break;
        }
        if b == b"--timeout" {
            timeout = Some(seconds(it.next())?);
            continue;
        }
        if let Some(v) = b.strip_prefix(b"--timeout=") {
            timeout = Some(seconds(Some(OsString::from_vec(v.to_vec())))?);
            continue;
        }
        if b.starts_with(b"--") {
            let takes_arg = LONG_WITH_ARG.contains(&a.to_string_lossy().as_ref());
            out.push(a);
            if takes_arg {
                out.extend(it.next());
            }
            continue;
        }
        if b.len() < 2 || b[0] != b'-' {
            out.push(a);
            continue;
        }
        // A bundle of short options: flags, then at most one option with an argument (the rest of
        // the word, or the next word if the rest is empty).
        let mut kept = vec![b'-'];
        let mut i = 1;
        let mut next_is_arg = false;
        while i < b.len() {
            let c = b[i];
            if c == b'T' {
                let rest = &b[i + 1..];
                let v = if rest.is_empty() {
                    it.next()
                } else {
                    Some(OsString::from_vec(rest.to_vec()))
                };
                timeout = Some(seconds(v)?);
                break;
            }
            kept.push(c);
            if SHORT_WITH_ARG.contains(&c) {
                kept.extend_from_slice(&b[i + 1..]);
                next_is_arg = i + 1 == b.len();
                break;
            }
            if c == b'n' {
                // `-n[ARG]`: an optional argument glued to it.
                kept.extend_from_slice(&b[i + 1..]);
                break;
            }
            i += 1;
        }
        if kept.len() > 1 {
            out.push(OsString::from_vec(kept));
        }
        if next_is_arg {
            out.extend(it.next());
        }
    }
    Ok(Split { args: out, timeout })
}

fn seconds(v: Option<OsString>) -> Result<u64, String> {
    let v = v.ok_or("wget: option requires an argument -- 'T'")?;
    let s = v.to_string_lossy();
    s.parse::<u64>()
        .map_err(|_| format!("wget: invalid number '{s}'"))
}

/// Runs as `wget`: never returns.
pub fn main() -> ! {
    let split = match split(std::env::args_os().skip(1).collect()) {
        Ok(s) => s,
        Err(msg) => {
            eprintln!("{msg}");
            std::process::exit(1);
        }
    };
    let mut cmd = Command::new(BUSYBOX);
    // busybox picks the applet from argv[0].
    cmd.arg0("wget").args(&split.args);
    let Some(secs) = split.timeout else {
        let e = cmd.exec();
        eprintln!("wget: cannot run {BUSYBOX}: {e}");
        std::process::exit(127);
    };
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("wget: cannot run {BUSYBOX}: {e}");
            std::process::exit(127);
        }
    };
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => std::process::exit(exit_code(status)),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                eprintln!("wget: download timed out");
                std::process::exit(1);
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => {
                eprintln!("wget: wait: {e}");
                std::process::exit(1);
            }
        }
    }
}

/// The shell's view of a status: the code, or 128 + signal.
fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<(Vec<String>, Option<u64>), String> {
        let s = split(args.iter().map(OsString::from).collect())?;
        Ok((
            s.args
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect(),
            s.timeout,
        ))
    }

    fn ok(args: &[&str]) -> (Vec<String>, Option<u64>) {
        run(args).unwrap()
    }

    #[test]
    fn timeout_forms_are_removed() {
        let url = "http://h/";
        let want = |t| (vec!["-q".to_string(), url.to_string()], Some(t));
        assert_eq!(ok(&["-q", "-T", "5", url]), want(5));
        assert_eq!(ok(&["-q", "-T5", url]), want(5));
        assert_eq!(ok(&["-q", "--timeout=7", url]), want(7));
        assert_eq!(ok(&["-q", "--timeout", "7", url]), want(7));
        assert_eq!(ok(&["-qT", "3", url]), want(3));
        assert_eq!(ok(&["-qT3", url]), want(3));
        assert_eq!(ok(&["-T1", "-q", "-T", "2", url]), want(2));
    }

    #[test]
    fn everything_else_passes_through_unchanged() {
        let args = [
            "-q",
            "-O-",
            "-O",
            "-T",
            "--header",
            "-T 5",
            "-cS",
            "-n",
            "-nT",
            "--spider",
            "-",
            "http://h/-T",
        ];
        assert_eq!(
            ok(&args),
            (args.iter().map(|s| s.to_string()).collect(), None)
        );
        // After `--` nothing is an option.
        assert_eq!(
            ok(&["--", "-T", "5"]),
            (vec!["--".into(), "-T".into(), "5".into()], None)
        );
        // An option with an argument ends the bundle: the T belongs to -O's file name.
        assert_eq!(
            ok(&["-qOT5", "u"]),
            (vec!["-qOT5".into(), "u".into()], None)
        );
        // A flag before the T stays in the bundle; what follows T is its value.
        assert_eq!(
            ok(&["-cqT9", "u"]),
            (vec!["-cq".into(), "u".into()], Some(9))
        );
    }

    #[test]
    fn bad_values_are_refused_like_busybox() {
        assert_eq!(
            run(&["-T", "x", "u"]).unwrap_err(),
            "wget: invalid number 'x'"
        );
        assert_eq!(
            run(&["-T"]).unwrap_err(),
            "wget: option requires an argument -- 'T'"
        );
        assert!(run(&["--timeout=-1", "u"]).is_err());
    }

    #[test]
    fn signals_map_to_128_plus_n() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(exit_code(std::process::ExitStatus::from_raw(11)), 139);
        assert_eq!(exit_code(std::process::ExitStatus::from_raw(3 << 8)), 3);
    }
}
