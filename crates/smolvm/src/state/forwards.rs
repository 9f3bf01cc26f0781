//! Host port forwards: `host_addr:host_port/protocol` on the host to `guest_port` in a VM.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::error::ValidationError;
use crate::state::error::{Fail, StateError};
use crate::state::leases::{free_host_port, ssh_port_holder};
use crate::state::{vms, StateStore};

/// Transport protocol of a forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// `tcp` or `udp`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Protocol {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            _ => Err(ValidationError::new(
                "protocol",
                format!("must be \"tcp\" or \"udp\", got {s:?}"),
            )),
        }
    }
}

/// A forward to create. `host_port: None` takes the lowest free port of the store's port range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortForwardRequest {
    /// Host address to listen on (`0.0.0.0` for all).
    pub host_addr: Ipv4Addr,
    /// Host port, or `None` to allocate one.
    pub host_port: Option<u16>,
    /// Port inside the guest.
    pub guest_port: u16,
    /// Protocol.
    pub protocol: Protocol,
}

/// A stored forward.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortForward {
    /// The VM it forwards to.
    pub vm_id: String,
    /// Host address.
    pub host_addr: Ipv4Addr,
    /// Host port.
    pub host_port: u16,
    /// Port inside the guest.
    pub guest_port: u16,
    /// Protocol.
    pub protocol: Protocol,
}

impl StateStore {
    /// Records a forward for `vm_id` in one write transaction, allocating the host port when the
    /// request has none (from the SSH port range, never a port any lease or forward holds).
    ///
    /// An explicit port is refused with [`StateError::PortConflict`] when another forward holds it on
    /// the same protocol and an overlapping address (equal, or either is `0.0.0.0`), or when it is a
    /// VM's SSH port. Asking again for a forward that already exists exactly returns it (idempotent).
    pub fn add_port_forward(
        &mut self,
        vm_id: &str,
        req: &PortForwardRequest,
    ) -> Result<PortForward, StateError> {
        let (range, probe) = (self.opts.ssh_port_range.clone(), self.opts.probe_host_ports);
        self.write(|tx| {
            if req.guest_port == 0 || req.host_port == Some(0) {
                return Err(
                    ValidationError::new("port", "must be between 1 and 65535, got 0").into(),
                );
            }
            vms::require_exists(tx, vm_id)?;
            let host_port = match req.host_port {
                Some(port) => {
                    if let Some(existing) = check_explicit(tx, vm_id, req, port)? {
                        return Ok(existing);
                    }
                    port
                }
                None => {
                    let probe = probe.then_some((req.host_addr, req.protocol));
                    free_host_port(tx, &range, probe)?
                }
            };
            tx.execute(
                "INSERT INTO port_forwards (vm_id, host_addr, host_port, guest_port, protocol)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    vm_id,
                    req.host_addr.to_string(),
                    host_port,
                    req.guest_port,
                    req.protocol.as_str()
                ],
            )?;
            Ok(PortForward {
                vm_id: vm_id.to_string(),
                host_addr: req.host_addr,
                host_port,
                guest_port: req.guest_port,
                protocol: req.protocol,
            })
        })
    }

    /// Removes one forward of `vm_id`. Returns whether it existed.
    pub fn remove_port_forward(
        &mut self,
        vm_id: &str,
        host_addr: Ipv4Addr,
        host_port: u16,
        protocol: Protocol,
    ) -> Result<bool, StateError> {
        self.write(|tx| {
            let n = tx.execute(
                "DELETE FROM port_forwards
                 WHERE vm_id = ?1 AND host_addr = ?2 AND host_port = ?3 AND protocol = ?4",
                params![vm_id, host_addr.to_string(), host_port, protocol.as_str()],
            )?;
            Ok(n > 0)
        })
    }

    /// The forwards of one VM, or of all VMs with `None`, in the order they were added.
    pub fn list_port_forwards(&self, vm_id: Option<&str>) -> Result<Vec<PortForward>, StateError> {
        self.read(|conn| {
            let mut stmt = conn.prepare(
                "SELECT vm_id, host_addr, host_port, guest_port, protocol FROM port_forwards
                 WHERE ?1 IS NULL OR vm_id = ?1 ORDER BY id",
            )?;
            let raws = stmt
                .query_map([vm_id], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, String>(4)?,
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            raws.into_iter()
                .map(|(vm_id, addr, host, guest, proto)| {
                    let bad =
                        |column: &'static str, e: Box<dyn std::error::Error + Send + Sync>| {
                            StateError::bad_row(&vm_id, column, e)
                        };
                    Ok(PortForward {
                        host_addr: addr.parse().map_err(|e| bad("host_addr", Box::new(e)))?,
                        host_port: u16::try_from(host)
                            .map_err(|e| bad("host_port", Box::new(e)))?,
                        guest_port: u16::try_from(guest)
                            .map_err(|e| bad("guest_port", Box::new(e)))?,
                        protocol: proto.parse().map_err(|e| bad("protocol", Box::new(e)))?,
                        vm_id,
                    })
                })
                .collect::<Result<Vec<_>, StateError>>()
                .map_err(Fail::from)
        })
    }
}

/// Checks an explicitly requested host port. Returns the existing forward when the request repeats it.
fn check_explicit(
    conn: &Connection,
    vm_id: &str,
    req: &PortForwardRequest,
    port: u16,
) -> Result<Option<PortForward>, Fail> {
    if req.protocol == Protocol::Tcp {
        if let Some(holder) = ssh_port_holder(conn, port)? {
            return Err(conflict(req, port, holder, "ssh").into());
        }
    }
    let any = Ipv4Addr::UNSPECIFIED.to_string();
    let clash: Option<(String, String, i64)> = conn
        .query_row(
            "SELECT vm_id, host_addr, guest_port FROM port_forwards
             WHERE host_port = ?1 AND protocol = ?2 AND (host_addr = ?3 OR host_addr = ?4 OR ?3 = ?4)
             ORDER BY host_addr = ?3 DESC LIMIT 1",
            params![port, req.protocol.as_str(), req.host_addr.to_string(), any],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    match clash {
        None => Ok(None),
        Some((holder, addr, guest))
            if holder == vm_id
                && addr == req.host_addr.to_string()
                && guest == i64::from(req.guest_port) =>
        {
            Ok(Some(PortForward {
                vm_id: holder,
                host_addr: req.host_addr,
                host_port: port,
                guest_port: req.guest_port,
                protocol: req.protocol,
            }))
        }
        Some((holder, _, _)) => Err(conflict(req, port, holder, "port forward").into()),
    }
}

fn conflict(
    req: &PortForwardRequest,
    port: u16,
    holder: String,
    purpose: &'static str,
) -> StateError {
    StateError::PortConflict {
        host_addr: req.host_addr,
        host_port: port,
        protocol: req.protocol,
        holder,
        purpose,
    }
}
