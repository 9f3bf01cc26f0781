//! Boot-stage timestamps (CLOCK_BOOTTIME, microseconds) reported in the Ready message. Stage 1 (the
//! initramfs) hands its stamps to stage 2 through one environment variable, because `exec` keeps
//! nothing else.

use smolvm_protocol::BootStage;

/// Environment variable carrying stage-1 timestamps across `exec`: `name=micros,name=micros`.
pub const ENV: &str = "SMOLVM_BOOT_STAGES";

/// Ordered boot stages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stages(pub Vec<BootStage>);

impl Stages {
    /// Records `name` now.
    pub fn mark(&mut self, name: &str) {
        self.0.push(BootStage {
            name: name.to_string(),
            micros: crate::sys::boottime_micros(),
        });
    }

    /// Adds `later` and keeps the list in time order (the agent's and PID 1's stamps interleave).
    pub fn merge(&mut self, later: Stages) {
        self.0.extend(later.0);
        self.0.sort_by_key(|s| s.micros);
    }

    /// True if a stage of that name was recorded.
    pub fn has(&self, name: &str) -> bool {
        self.0.iter().any(|s| s.name == name)
    }

    /// Encodes for [`ENV`].
    pub fn encode(&self) -> String {
        self.0
            .iter()
            .map(|s| format!("{}={}", s.name, s.micros))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Decodes [`ENV`]; malformed entries are skipped (timestamps are diagnostics, never fatal).
    pub fn decode(s: &str) -> Stages {
        Stages(
            s.split(',')
                .filter_map(|e| {
                    let (n, m) = e.split_once('=')?;
                    Some(BootStage {
                        name: n.to_string(),
                        micros: m.parse().ok()?,
                    })
                })
                .collect(),
        )
    }

    /// Takes stage-1 stamps from the environment (and removes the variable so children never see it).
    pub fn from_env() -> Stages {
        let s = std::env::var(ENV)
            .map(|v| Stages::decode(&v))
            .unwrap_or_default();
        std::env::remove_var(ENV);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_skips_garbage() {
        let s = Stages(vec![
            BootStage {
                name: "init_start".into(),
                micros: 12,
            },
            BootStage {
                name: "modules_loaded".into(),
                micros: 3400,
            },
        ]);
        assert_eq!(Stages::decode(&s.encode()), s);
        assert_eq!(Stages::decode("a=1,b,c=x,,d=4").0.len(), 2);
        assert!(Stages::decode("").0.is_empty());
    }
}
