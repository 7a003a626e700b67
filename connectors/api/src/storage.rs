//! Object-store settings (the Hive sink's storage, the state store).

use std::collections::BTreeMap;

/// Storage settings passed to `object_store` (`endpoint`, `region`, `access_key_id`,
/// `secret_access_key`, `allow_http`, ...). Values are never printed.
#[derive(Clone, Default)]
pub struct StorageOptions(pub BTreeMap<String, String>);

impl std::fmt::Debug for StorageOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

impl StorageOptions {
    /// `AWS_*` and other environment settings first, then the explicit ones (which win).
    pub fn with_env(&self) -> Vec<(String, String)> {
        std::env::vars()
            .chain(self.0.iter().map(|(k, v)| (k.clone(), v.clone())))
            .collect()
    }
}
