//! Guest network setup from `smolvm.*` parameters with plain ioctls (no `ip` binary, no netlink
//! library): bring `lo` up, give the first non-loopback interface its address, add the default route,
//! write `/etc/resolv.conf` ([`write_resolv_conf`]). The interface is chosen by order, not by MAC
//! address, so any MAC works.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::cmdline::BootParams;

/// `struct rtentry` of `<net/route.h>` on 64-bit Linux (libc only defines it for musl).
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_tos: libc::c_uchar,
    rt_class: libc::c_uchar,
    rt_pad4: [libc::c_short; 3],
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}
#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<RtEntry>() == 120);

const RTF_UP: libc::c_ushort = 0x0001;
const RTF_GATEWAY: libc::c_ushort = 0x0002;

/// Applies the network parameters. Returns the configured interface name, if any.
pub fn configure(p: &BootParams) -> io::Result<Option<String>> {
    let sock = socket()?;
    set_up(&sock, "lo")?;
    let Some((addr, prefix)) = p.ip else {
        return Ok(None);
    };
    let iface = first_interface()?.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            "smolvm.ip given but the guest has no network interface (virtio_net loaded?)",
        )
    })?;
    ioctl_addr(&sock, &iface, libc::SIOCSIFADDR, addr)?;
    ioctl_addr(&sock, &iface, libc::SIOCSIFNETMASK, netmask(prefix))?;
    set_up(&sock, &iface)?;
    if let Some(gw) = p.gateway {
        add_default_route(&sock, gw)?;
    }
    Ok(Some(iface))
}

/// Moves the first interface to a new MAC, address and default route (after a restore from a
/// snapshot). Taking the interface down first flushes the routes and neighbour entries of the old
/// network, so nothing of the snapshotted guest's addressing survives.
pub fn reconfigure(n: &smolvm_protocol::NetIdentity) -> io::Result<()> {
    let sock = socket()?;
    let iface = first_interface()?
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no network interface"))?;
    set_flags(&sock, &iface, 0, libc::IFF_UP as libc::c_short)?;
    let mac = smolvm_protocol::parse_mac(&n.mac)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    if let Err(e) = set_mac(&sock, &iface, mac) {
        // Not fatal: each VM has its own TAP, so the old MAC still works; the address matters more.
        crate::log(&format!("{iface}: set MAC {}: {e}", n.mac));
    }
    ioctl_addr(&sock, &iface, libc::SIOCSIFADDR, n.ip)?;
    ioctl_addr(&sock, &iface, libc::SIOCSIFNETMASK, netmask(n.prefix))?;
    set_up(&sock, &iface)?;
    if let Some(gw) = n.gateway {
        add_default_route(&sock, gw)?;
    }
    std::fs::write(RESOLV_CONF, resolv_conf_text(&n.dns))
}

fn set_flags(
    sock: &OwnedFd,
    iface: &str,
    set: libc::c_short,
    clear: libc::c_short,
) -> io::Result<()> {
    let mut r = ifreq(iface)?;
    // SAFETY: valid socket and ifreq.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut r) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    let flags = unsafe { r.ifr_ifru.ifru_flags };
    r.ifr_ifru.ifru_flags = (flags | set) & !clear;
    // SAFETY: as above.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &mut r) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn set_mac(sock: &OwnedFd, iface: &str, mac: [u8; 6]) -> io::Result<()> {
    let mut r = ifreq(iface)?;
    // SAFETY: sockaddr is plain data; all-zero is valid.
    let mut sa: libc::sockaddr = unsafe { std::mem::zeroed() };
    sa.sa_family = libc::ARPHRD_ETHER;
    for (d, s) in sa.sa_data.iter_mut().zip(mac) {
        *d = s as libc::c_char;
    }
    r.ifr_ifru.ifru_hwaddr = sa;
    // SAFETY: valid socket and ifreq for SIOCSIFHWADDR.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFHWADDR, &mut r) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The guest's resolver configuration.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";

/// Writes the resolver configuration when smolvm configures the network (`smolvm.ip` given): the
/// `smolvm.dns` servers, or a comment saying there are none, so a disk that kept an older file from a
/// previous boot never points at stale servers. Without `smolvm.ip` the image's own file stays.
pub fn write_resolv_conf(path: &std::path::Path, p: &BootParams) -> io::Result<()> {
    if p.ip.is_none() {
        return Ok(());
    }
    std::fs::write(path, resolv_conf_text(&p.dns))
}

/// `/etc/resolv.conf` text for `servers`.
pub fn resolv_conf_text(servers: &[Ipv4Addr]) -> String {
    let mut text = String::from("# written by smolvm-agent at boot from smolvm.dns=\n");
    if servers.is_empty() {
        text.push_str("# no name server: the host named none this VM can reach\n");
    }
    for s in servers {
        text.push_str(&format!("nameserver {s}\n"));
    }
    text
}

/// The netmask of a prefix length.
pub fn netmask(prefix: u8) -> Ipv4Addr {
    let bits = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix.min(32)))
    };
    Ipv4Addr::from(bits)
}

/// The first non-loopback interface in name order (`eth0` in our VMs).
fn first_interface() -> io::Result<Option<String>> {
    let mut names: Vec<String> = std::fs::read_dir("/sys/class/net")?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n != "lo")
        .collect();
    names.sort();
    Ok(names.into_iter().next())
}

fn socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    if name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "interface name too long",
        ));
    }
    // SAFETY: ifreq is plain data; all-zero is valid.
    let mut r: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in r.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    Ok(r)
}

fn sockaddr_in(a: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(a).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size (16 bytes); this is the C idiom.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn ioctl_addr(sock: &OwnedFd, iface: &str, req: libc::c_ulong, addr: Ipv4Addr) -> io::Result<()> {
    let mut r = ifreq(iface)?;
    r.ifr_ifru.ifru_addr = sockaddr_in(addr);
    // SAFETY: valid socket and a valid ifreq for this request.
    if unsafe { libc::ioctl(sock.as_raw_fd(), req, &mut r) } < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("{iface}: set address {addr}: {e}"),
        ));
    }
    Ok(())
}

fn set_up(sock: &OwnedFd, iface: &str) -> io::Result<()> {
    let mut r = ifreq(iface)?;
    // SAFETY: valid socket and ifreq.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut r) } < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{iface}: get flags: {e}")));
    }
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    let flags = unsafe { r.ifr_ifru.ifru_flags };
    r.ifr_ifru.ifru_flags = flags | (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    // SAFETY: as above.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &mut r) } < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{iface}: bring up: {e}")));
    }
    Ok(())
}

fn add_default_route(sock: &OwnedFd, gw: Ipv4Addr) -> io::Result<()> {
    let any = sockaddr_in(Ipv4Addr::UNSPECIFIED);
    let mut rt = RtEntry {
        rt_pad1: 0,
        rt_dst: any,
        rt_gateway: sockaddr_in(gw),
        rt_genmask: any,
        rt_flags: RTF_UP | RTF_GATEWAY,
        rt_pad2: 0,
        rt_pad3: 0,
        rt_tos: 0,
        rt_class: 0,
        rt_pad4: [0; 3],
        rt_metric: 0,
        rt_dev: std::ptr::null_mut(),
        rt_mtu: 0,
        rt_window: 0,
        rt_irtt: 0,
    };
    // SAFETY: valid socket and a correctly laid out rtentry.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCADDRT, &mut rt) } < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EEXIST) {
            return Err(io::Error::new(
                e.kind(),
                format!("default route via {gw}: {e}"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_only_when_smolvm_sets_up_the_network() {
        let t = std::env::temp_dir().join(format!("smolvm-agent-resolv-{}", std::process::id()));
        std::fs::write(&t, "nameserver 192.0.2.9\n").unwrap();
        let mut p = crate::cmdline::parse("smolvm.dns=10.0.2.3");
        write_resolv_conf(&t, &p).unwrap();
        assert_eq!(
            std::fs::read_to_string(&t).unwrap(),
            "nameserver 192.0.2.9\n"
        );
        p = crate::cmdline::parse("smolvm.ip=10.0.2.15/24 smolvm.dns=10.0.2.3,192.0.2.1");
        write_resolv_conf(&t, &p).unwrap();
        let text = std::fs::read_to_string(&t).unwrap();
        assert!(
            text.ends_with("\nnameserver 10.0.2.3\nnameserver 192.0.2.1\n"),
            "{text}"
        );
        p = crate::cmdline::parse("smolvm.ip=172.16.0.2/16");
        write_resolv_conf(&t, &p).unwrap();
        let text = std::fs::read_to_string(&t).unwrap();
        assert!(!text.contains("nameserver"), "{text}");
        std::fs::remove_file(&t).unwrap();
    }

    #[test]
    fn netmasks() {
        assert_eq!(netmask(0), Ipv4Addr::new(0, 0, 0, 0));
        assert_eq!(netmask(8), Ipv4Addr::new(255, 0, 0, 0));
        assert_eq!(netmask(30), Ipv4Addr::new(255, 255, 255, 252));
        assert_eq!(netmask(32), Ipv4Addr::new(255, 255, 255, 255));
    }
}
