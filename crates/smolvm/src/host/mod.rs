//! Host prerequisites and capabilities: is KVM usable, which VMMs and tools are installed.
