//! [`SmolVmBuilder`]: an owned VM from auto-configuration (the default image, sized as asked) or from
//! a [`VmConfig`].

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::{SmolVm, DEFAULT_SSH_USER};
use crate::config::{BackendKind, VmConfig};
use crate::error::Result;
use crate::info::NetworkMode;
use crate::manager::{CreateOptions, SmolVmManager};

/// Builder of an owned VM (auto-config from the default image, or from a [`VmConfig`]).
#[derive(Debug, Clone, Default)]
pub struct SmolVmBuilder {
    pub(super) config: Option<VmConfig>,
    pub(super) vm_id: Option<String>,
    pub(super) mem_size_mib: Option<u32>,
    pub(super) vcpu_count: Option<u32>,
    pub(super) disk_size_mib: Option<u64>,
    pub(super) image: Option<String>,
    pub(super) data_dir: Option<PathBuf>,
    pub(super) socket_dir: Option<PathBuf>,
    pub(super) backend: Option<BackendKind>,
    pub(super) network: NetworkMode,
    pub(super) templates: Option<bool>,
    pub(super) manager: Option<Arc<SmolVmManager>>,
}

impl SmolVmBuilder {
    /// Use this config instead of auto-configuration.
    pub fn config(mut self, config: VmConfig) -> Self {
        self.config = Some(config);
        self
    }
    /// VM id for auto-configuration (default: generated).
    pub fn vm_id(mut self, id: impl Into<String>) -> Self {
        self.vm_id = Some(id.into());
        self
    }
    /// Guest memory for auto-configuration.
    pub fn mem_size_mib(mut self, mib: u32) -> Self {
        self.mem_size_mib = Some(mib);
        self
    }
    /// vCPUs for auto-configuration.
    pub fn vcpu_count(mut self, n: u32) -> Self {
        self.vcpu_count = Some(n);
        self
    }
    /// Root disk size for auto-configuration: the VM's disk is grown to it (and its ext4 resized)
    /// when larger than the image's rootfs.
    pub fn disk_size_mib(mut self, mib: u64) -> Self {
        self.disk_size_mib = Some(mib);
        self
    }
    /// Boot this cached image (`smolvm image list`) instead of the default one.
    pub fn image(mut self, name: impl Into<String>) -> Self {
        self.image = Some(name.into());
        self
    }
    /// State directory (spec default resolution otherwise).
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }
    /// Socket directory.
    pub fn socket_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.socket_dir = Some(dir.into());
        self
    }
    /// Backend (`None` = auto).
    pub fn backend(mut self, backend: Option<BackendKind>) -> Self {
        self.backend = backend;
        self
    }
    /// Network attachment.
    pub fn network(mut self, choice: NetworkMode) -> Self {
        self.network = choice;
        self
    }
    /// Uses this manager (shared with other VMs, or built with [`SmolVmManager::builder`]) instead of
    /// opening one; `data_dir`, `socket_dir` and `backend` are then the manager's.
    pub fn manager(mut self, manager: Arc<SmolVmManager>) -> Self {
        self.manager = Some(manager);
        self
    }

    /// Creates the VM (state `created`); the returned value owns it.
    pub fn build(self) -> Result<SmolVm> {
        let manager = match &self.manager {
            Some(m) => m.clone(),
            None => Arc::new(SmolVmManager::new(
                self.data_dir.as_deref(),
                self.socket_dir.as_deref(),
                self.backend,
            )?),
        };
        let use_templates = self
            .templates
            .unwrap_or(self.config.is_none() && crate::manager::templates_enabled_by_env());
        let config = match self.config {
            Some(c) => c,
            None => auto_config(&manager, &self)?,
        };
        let opts = CreateOptions {
            network: self.network,
            ..CreateOptions::default()
        };
        let (info, make_template) = if use_templates {
            let (created, make) = manager.create_with_templates(&config, &opts)?;
            (created.info, make)
        } else {
            (manager.create_with(&config, &opts)?, None)
        };
        Ok(SmolVm {
            make_template,
            manager,
            vm_id: info.vm_id.clone(),
            info,
            owned: true,
            released: false,
            agent: Mutex::new(None),
            ssh_user: DEFAULT_SSH_USER.to_string(),
            ssh_key_path: None,
            ssh_ready: Default::default(),
        })
    }

    /// Creates and starts the VM (the spec's `with SmolVM(...) as vm:` entry).
    pub fn launch(self) -> Result<SmolVm> {
        let mut vm = self.build()?;
        vm.start()?;
        Ok(vm)
    }
}

/// Auto-configuration: the default image (built once and cached), sized as asked. The asked values are
/// checked before the (slow, first-time) image build.
fn auto_config(manager: &SmolVmManager, b: &SmolVmBuilder) -> Result<VmConfig> {
    let apply = |mut spec: crate::config::VmConfigSpec| {
        if let Some(mib) = b.disk_size_mib {
            spec = spec.disk_size_mib(mib);
        }
        if let Some(id) = &b.vm_id {
            spec = spec.vm_id(id.clone());
        }
        if let Some(m) = b.mem_size_mib {
            spec = spec.mem_size_mib(m);
        }
        if let Some(n) = b.vcpu_count {
            spec = spec.vcpu_count(n);
        }
        spec
    };
    apply(crate::config::VmConfigSpec::new("", "")).validate_fields()?;
    let spec = manager.image_config(b.image.as_deref(), b.backend)?;
    Ok(apply(spec).build()?)
}
