//! [`SettingsGuard`]: put the global KSM knobs back the way they were.

use crate::{Change, Ksm, KsmError, KsmSettings};

/// Saves every KSM setting on creation and restores it on drop.
///
/// Tests and benchmarks change global knobs; holding a guard makes sure they
/// are put back even when the code panics. Restoring goes through
/// [`Ksm::apply`], so only knobs that differ are written. Errors on drop are
/// logged; call [`SettingsGuard::restore`] to see them instead.
#[derive(Debug)]
#[must_use = "the settings are restored when the guard is dropped"]
pub struct SettingsGuard {
    ksm: Ksm,
    saved: KsmSettings,
    armed: bool,
}

impl SettingsGuard {
    /// Reads and remembers the current settings of `ksm`.
    pub fn save(ksm: &Ksm) -> Result<Self, KsmError> {
        Ok(SettingsGuard {
            ksm: ksm.clone(),
            saved: ksm.settings()?,
            armed: true,
        })
    }

    /// The settings that will be restored.
    pub fn saved(&self) -> &KsmSettings {
        &self.saved
    }

    /// Restores now and reports what was changed back (or what failed).
    pub fn restore(mut self) -> Result<Vec<Change>, KsmError> {
        self.armed = false;
        self.ksm.apply(&self.saved)
    }
}

impl Drop for SettingsGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        match self.ksm.apply(&self.saved) {
            Ok(changes) => {
                for c in changes {
                    log::debug!("ksm: restored {c}");
                }
            }
            Err(e) => log::error!("ksm: could not restore settings: {e}"),
        }
    }
}
