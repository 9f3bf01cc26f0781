//! The host's Debian mirror, read from apt's configuration (`/etc/apt/sources.list` and the deb822
//! files in `/etc/apt/sources.list.d/`), so image builds download from where the host's own package
//! traffic goes.

use std::fs;
use std::path::Path;

/// Used when the host's apt configuration names no Debian mirror.
pub(super) const FALLBACK_MIRROR: &str = "http://deb.debian.org/debian";

/// The first main-archive mirror of the host's apt sources, else [`FALLBACK_MIRROR`].
pub(super) fn host_mirror() -> String {
    host_mirror_in(Path::new("/etc/apt")).unwrap_or_else(|| FALLBACK_MIRROR.to_string())
}

fn host_mirror_in(apt_dir: &Path) -> Option<String> {
    let mut files = vec![apt_dir.join("sources.list")];
    if let Ok(rd) = fs::read_dir(apt_dir.join("sources.list.d")) {
        let mut extra: Vec<_> = rd.flatten().map(|e| e.path()).collect();
        extra.sort();
        files.extend(extra);
    }
    files.iter().find_map(|f| {
        let text = fs::read_to_string(f).ok()?;
        if f.extension().is_some_and(|e| e == "sources") {
            main_mirror_deb822(&text)
        } else {
            main_mirror_one_line(&text)
        }
    })
}

/// A mirror serves the main archive if one of its suites is a plain code name (`bookworm`, not
/// `bookworm-security` or `bookworm-backports`, which live elsewhere or hold only a few packages).
fn is_main(uri: &str, suites: &[&str]) -> bool {
    (uri.starts_with("http://") || uri.starts_with("https://"))
        && !uri.contains("security")
        && suites.iter().any(|s| !s.contains(['-', '/']))
}

/// From one-line style (`deb [opts] URI suite component...`).
pub(super) fn main_mirror_one_line(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let l = l.split('#').next()?.trim();
        let rest = l.strip_prefix("deb ")?.trim_start();
        let rest = match rest.strip_prefix('[') {
            Some(r) => r.split_once(']')?.1,
            None => rest,
        };
        let mut w = rest.split_whitespace();
        let uri = w.next()?;
        let suite = w.next()?;
        is_main(uri, &[suite]).then(|| uri.trim_end_matches('/').to_string())
    })
}

/// From deb822 style (stanzas of `Types:`, `URIs:`, `Suites:` ...; `Enabled: no` skipped).
pub(super) fn main_mirror_deb822(text: &str) -> Option<String> {
    text.split("\n\n").find_map(|stanza| {
        let field = |name: &str| {
            stanza.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_string())
            })
        };
        let types = field("Types")?;
        if !types.split_whitespace().any(|t| t == "deb")
            || field("Enabled").is_some_and(|e| e.eq_ignore_ascii_case("no"))
        {
            return None;
        }
        let uris = field("URIs")?;
        let suites = field("Suites")?;
        let suites: Vec<&str> = suites.split_whitespace().collect();
        uris.split_whitespace()
            .find(|u| is_main(u, &suites))
            .map(|u| u.trim_end_matches('/').to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_source_formats() {
        let one = "# comment\ndeb-src http://src.example/debian bookworm main\n\
                   deb http://security.debian.org/debian-security bookworm-security main\n\
                   deb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian/ bookworm main contrib\n";
        assert_eq!(
            main_mirror_one_line(one).as_deref(),
            Some("http://mirror.example/debian")
        );
        let deb822 = "Types: deb\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\n\n\
                      Types: deb\nURIs: http://off.example/debian\nSuites: bookworm\nEnabled: no\n\n\
                      Types: deb deb-src\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\n\
                      Components: main\n";
        assert_eq!(
            main_mirror_deb822(deb822).as_deref(),
            Some("http://deb.debian.org/debian")
        );
        let backports_only =
            "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\n";
        assert_eq!(main_mirror_deb822(backports_only), None);
    }

    #[test]
    fn host_lookup_falls_back() {
        let t = tempfile::tempdir().unwrap();
        assert_eq!(host_mirror_in(t.path()), None);
        fs::create_dir(t.path().join("sources.list.d")).unwrap();
        fs::write(
            t.path().join("sources.list.d/debian.sources"),
            "Types: deb\nURIs: http://m.example/debian\nSuites: trixie\n",
        )
        .unwrap();
        assert_eq!(
            host_mirror_in(t.path()).as_deref(),
            Some("http://m.example/debian")
        );
    }
}
