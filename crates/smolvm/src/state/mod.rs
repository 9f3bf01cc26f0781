//! SQLite state store: VMs, leases (IP, TAP, MAC, SSH port) and port forwards.
