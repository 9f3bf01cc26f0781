//! Choosing the kernel modules the guest needs and their load order.
//!
//! A distribution package ships no `modules.dep` (depmod makes it at install time), so dependencies
//! come from each module's own `.modinfo` section (`depends=a,b`), which is what depmod reads too.
//! Drivers built into the kernel (listed in `modules.builtin`) need nothing. The result is the load list
//! the agent's initramfs stage reads: dependencies first, each module tagged with the condition under
//! which the machine needs it (see `smolvm-agent/src/modules.rs` for the format).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use super::elf::Elf;
use super::error::ImageError;
use crate::host::tools;

/// A driver the guest wants: module name, load condition, and whether the image is useless without it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Wanted {
    /// Module name (underscores).
    pub name: &'static str,
    /// Agent load-list condition.
    pub condition: &'static str,
    /// Fail the build if the kernel lacks it.
    pub required: bool,
}

/// The guest's drivers, transports first (their devices must exist before the drivers' conditions are
/// checked).
pub(super) const WANTED: &[Wanted] = &[
    Wanted {
        name: "virtio_mmio",
        condition: "always",
        required: true,
    },
    Wanted {
        name: "virtio_pci",
        condition: "pci",
        required: false,
    },
    Wanted {
        name: "virtio_blk",
        condition: "virtio:2",
        required: true,
    },
    Wanted {
        name: "virtio_net",
        condition: "virtio:1",
        required: true,
    },
    Wanted {
        name: "virtio_console",
        condition: "virtio:3",
        required: true,
    },
    Wanted {
        name: "virtio_rng",
        condition: "virtio:4",
        required: false,
    },
    Wanted {
        name: "vmw_vsock_virtio_transport",
        condition: "virtio:19",
        required: true,
    },
    // ACPI power button -> input event the agent watches (QEMU's system_powerdown).
    Wanted {
        name: "button",
        condition: "acpi",
        required: false,
    },
    Wanted {
        name: "evdev",
        condition: "acpi",
        required: false,
    },
];

/// One module to ship.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ModuleFile {
    /// Module name.
    pub name: String,
    /// File name in the initramfs module directory (`<name>.ko`).
    pub file_name: String,
    /// Uncompressed module bytes.
    pub data: Vec<u8>,
    /// Load conditions (agent syntax).
    pub conditions: BTreeSet<String>,
}

/// The selection: modules in load order, plus warnings about optional drivers left out.
#[derive(Debug, Clone, Default)]
pub(super) struct Selection {
    /// Modules, dependencies first.
    pub modules: Vec<ModuleFile>,
    /// Optional drivers the kernel lacks.
    pub warnings: Vec<String>,
}

impl Selection {
    /// The agent's `load.list`.
    pub(super) fn load_list(&self) -> String {
        let mut s =
            String::from("# smolvm module load list: <file> <condition>[,<condition>...]\n");
        for m in &self.modules {
            let conds: Vec<&str> = m.conditions.iter().map(String::as_str).collect();
            s.push_str(&format!("{} {}\n", m.file_name, conds.join(",")));
        }
        s
    }
}

/// Canonical module name: file stem, `-` as `_` (what the kernel and `depends=` use).
fn module_name(file_name: &str) -> Option<String> {
    let stem = file_name
        .strip_suffix(".ko")
        .or_else(|| file_name.strip_suffix(".ko.xz"))
        .or_else(|| file_name.strip_suffix(".ko.zst"))
        .or_else(|| file_name.strip_suffix(".ko.gz"))?;
    Some(stem.replace('-', "_"))
}

/// Indexes module files under `dir` (recursively) by module name.
fn index(dir: &Path) -> Result<HashMap<String, PathBuf>, ImageError> {
    let mut out = HashMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let rd = std::fs::read_dir(&d).map_err(|e| ImageError::io("read directory", &d, e))?;
        for e in rd.flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(p),
                Ok(t) if t.is_file() => {
                    if let Some(n) = e.file_name().to_str().and_then(module_name) {
                        out.entry(n).or_insert(p);
                    }
                }
                _ => {}
            }
        }
    }
    Ok(out)
}

/// Names of built-in drivers from `modules.builtin` (`kernel/fs/ext4/ext4.ko` -> `ext4`).
fn builtin(dir: &Path) -> BTreeSet<String> {
    std::fs::read_to_string(dir.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| module_name(l.rsplit('/').next()?))
        .collect()
}

/// Reads a module file, decompressing `.xz`/`.zst`/`.gz`.
fn read_module(path: &Path) -> Result<Vec<u8>, ImageError> {
    let data = std::fs::read(path).map_err(|e| ImageError::io("read module", path, e))?;
    let name = path.to_string_lossy();
    if name.ends_with(".xz") {
        Ok(tools::filter(&["xz", "-dc"], "xz-utils", &data)?)
    } else if name.ends_with(".zst") {
        Ok(tools::filter(&["zstd", "-dcq"], "zstd", &data)?)
    } else if name.ends_with(".gz") {
        use std::io::Read;
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&data[..])
            .read_to_end(&mut out)
            .map_err(|e| ImageError::io("decompress module", path, e))?;
        Ok(out)
    } else {
        Ok(data)
    }
}

/// `key=value` pairs of a module's `.modinfo` section.
pub(super) fn modinfo(data: &[u8]) -> Result<BTreeMap<String, String>, String> {
    let elf = Elf::parse(data)?;
    let sec = elf.section(".modinfo").ok_or("no .modinfo section")?;
    Ok(sec
        .split(|&b| b == 0)
        .filter_map(|kv| {
            let s = std::str::from_utf8(kv).ok()?;
            let (k, v) = s.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect())
}

/// Selects the modules of [`WANTED`] and their dependencies from a `lib/modules/<release>` directory.
/// `release`, when known, must match each module's `vermagic` (the kernel refuses others).
pub(super) fn select(dir: &Path, release: Option<&str>) -> Result<Selection, ImageError> {
    let files = index(dir)?;
    let builtin = builtin(dir);
    let release_name = release.unwrap_or("(unknown release)").to_string();
    let mut loaded: HashMap<String, (Vec<u8>, Vec<String>)> = HashMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut closure_of: Vec<(Wanted, Vec<String>)> = Vec::new();
    let mut sel = Selection::default();
    for w in WANTED {
        if builtin.contains(w.name) {
            continue;
        }
        let mut closure = Vec::new();
        match visit(
            w.name,
            &files,
            &builtin,
            release,
            &mut loaded,
            &mut order,
            &mut closure,
            0,
        ) {
            Ok(()) => closure_of.push((*w, closure)),
            Err(missing) if w.required => {
                return Err(match missing {
                    VisitError::Missing(m) => ImageError::ModuleMissing {
                        module: m,
                        release: release_name,
                        modules_dir: dir.to_path_buf(),
                    },
                    VisitError::Bad(e) => e,
                })
            }
            Err(e) => sel.warnings.push(format!(
                "optional driver {} left out: {}",
                w.name,
                match e {
                    VisitError::Missing(m) => format!("{m} not found"),
                    VisitError::Bad(e) => e.to_string(),
                }
            )),
        }
    }
    let mut conds: HashMap<&str, BTreeSet<String>> = HashMap::new();
    for (w, closure) in &closure_of {
        for m in closure {
            conds.entry(m).or_default().insert(w.condition.to_string());
        }
    }
    for name in &order {
        let Some(c) = conds.get(name.as_str()) else {
            continue; // only reached through an optional driver that failed later
        };
        let Some((data, _)) = loaded.get(name) else {
            continue;
        };
        // "always" subsumes the rest.
        let conditions = if c.contains("always") {
            BTreeSet::from(["always".to_string()])
        } else {
            c.clone()
        };
        sel.modules.push(ModuleFile {
            name: name.clone(),
            file_name: format!("{name}.ko"),
            data: data.clone(),
            conditions,
        });
    }
    Ok(sel)
}

enum VisitError {
    Missing(String),
    Bad(ImageError),
}

/// Depth-first: dependencies are pushed to `order` before the module; `closure` collects every module
/// this root needs.
#[allow(clippy::too_many_arguments)]
fn visit(
    name: &str,
    files: &HashMap<String, PathBuf>,
    builtin: &BTreeSet<String>,
    release: Option<&str>,
    loaded: &mut HashMap<String, (Vec<u8>, Vec<String>)>,
    order: &mut Vec<String>,
    closure: &mut Vec<String>,
    depth: usize,
) -> Result<(), VisitError> {
    if builtin.contains(name) || closure.iter().any(|c| c == name) {
        return Ok(());
    }
    if depth > 32 {
        return Err(VisitError::Bad(ImageError::BadModule {
            path: PathBuf::from(name),
            reason: "dependency chain too deep (a cycle?)".into(),
        }));
    }
    if !loaded.contains_key(name) {
        let path = files
            .get(name)
            .ok_or_else(|| VisitError::Missing(name.to_string()))?;
        let data = read_module(path).map_err(VisitError::Bad)?;
        let bad = |reason: String| {
            VisitError::Bad(ImageError::BadModule {
                path: path.clone(),
                reason,
            })
        };
        let info = modinfo(&data).map_err(bad)?;
        if let (Some(rel), Some(vm)) = (release, info.get("vermagic")) {
            if vm.split_whitespace().next() != Some(rel) {
                return Err(bad(format!(
                    "built for kernel {vm:?}, not {rel}: point the modules directory at the kernel's own"
                )));
            }
        }
        let deps: Vec<String> = info
            .get("depends")
            .map(|d| {
                d.split(',')
                    .filter(|s| !s.is_empty())
                    .map(|s| s.replace('-', "_"))
                    .collect()
            })
            .unwrap_or_default();
        loaded.insert(name.to_string(), (data, deps));
    }
    let deps = loaded.get(name).map(|(_, d)| d.clone()).unwrap_or_default();
    for d in &deps {
        visit(
            d,
            files,
            builtin,
            release,
            loaded,
            order,
            closure,
            depth + 1,
        )?;
    }
    closure.push(name.to_string());
    if !order.iter().any(|o| o == name) {
        order.push(name.to_string());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::elf::build_test_elf;

    fn ko(name: &str, depends: &str) -> Vec<u8> {
        let info = format!("name={name}\0depends={depends}\0vermagic=6.1.0-test SMP mod_unload \0");
        build_test_elf(false, &[(".modinfo", info.as_bytes())])
    }

    fn fixture(skip: &[&str]) -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let k = t.path().join("kernel/drivers");
        std::fs::create_dir_all(&k).unwrap();
        let mods = [
            ("virtio", ""),
            ("virtio_ring", ""),
            ("virtio_mmio", "virtio,virtio_ring"),
            ("virtio_blk", "virtio,virtio_ring"),
            ("failover", ""),
            ("net_failover", "failover"),
            ("virtio_net", "virtio_ring,virtio,net_failover"),
            ("virtio_console", "virtio,virtio_ring"),
            ("vsock", ""),
            ("vmw_vsock_virtio_transport_common", "vsock"),
            (
                "vmw_vsock_virtio_transport",
                "virtio,vmw_vsock_virtio_transport_common,virtio_ring,vsock",
            ),
        ];
        for (n, d) in mods {
            if !skip.contains(&n) {
                std::fs::write(k.join(format!("{n}.ko")), ko(n, d)).unwrap();
            }
        }
        // virtio-rng ships with a dash in its file name.
        std::fs::write(
            k.join("virtio-rng.ko"),
            ko("virtio_rng", "virtio,virtio_ring"),
        )
        .unwrap();
        std::fs::write(
            t.path().join("modules.builtin"),
            "kernel/fs/ext4/ext4.ko\nkernel/drivers/input/evdev.ko\n",
        )
        .unwrap();
        t
    }

    #[test]
    fn selects_in_dependency_order_with_conditions() {
        let t = fixture(&[]);
        let sel = select(t.path(), Some("6.1.0-test")).unwrap();
        let names: Vec<&str> = sel.modules.iter().map(|m| m.name.as_str()).collect();
        let pos = |n: &str| {
            names
                .iter()
                .position(|x| *x == n)
                .unwrap_or_else(|| panic!("{n} missing"))
        };
        assert!(pos("virtio") < pos("virtio_mmio"));
        assert!(pos("virtio_mmio") < pos("virtio_blk"));
        assert!(pos("failover") < pos("net_failover"));
        assert!(pos("net_failover") < pos("virtio_net"));
        assert!(pos("vsock") < pos("vmw_vsock_virtio_transport"));
        assert!(!names.contains(&"evdev"), "built in");
        let cond = |n: &str| {
            sel.modules[pos(n)]
                .conditions
                .iter()
                .cloned()
                .collect::<Vec<_>>()
                .join(",")
        };
        assert_eq!(cond("virtio"), "always");
        assert_eq!(cond("net_failover"), "virtio:1");
        assert_eq!(cond("vsock"), "virtio:19");
        assert_eq!(sel.modules[pos("virtio_rng")].file_name, "virtio_rng.ko");
        // virtio_pci and button are optional and absent.
        assert_eq!(sel.warnings.len(), 2, "{:?}", sel.warnings);
        let list = sel.load_list();
        assert!(list.contains("\nvirtio_blk.ko virtio:2\n"), "{list}");
    }

    #[test]
    fn missing_required_driver_or_wrong_kernel_fails() {
        let t = fixture(&["virtio_blk"]);
        let e = select(t.path(), Some("6.1.0-test")).unwrap_err();
        assert!(
            matches!(&e, ImageError::ModuleMissing { module, .. } if module == "virtio_blk"),
            "{e}"
        );
        let t = fixture(&["failover"]);
        let e = select(t.path(), Some("6.1.0-test")).unwrap_err();
        assert!(
            matches!(&e, ImageError::ModuleMissing { module, .. } if module == "failover"),
            "{e}"
        );
        let t = fixture(&[]);
        let e = select(t.path(), Some("6.2.0-other")).unwrap_err();
        assert!(e.to_string().contains("6.2.0-other"), "{e}");
    }
}
