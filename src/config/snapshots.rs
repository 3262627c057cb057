//! `[snapshots]`: the settings of the JPEG pictures of the named sources (`server::snapshots`).

use super::ConfigError;
use crate::media::encode::snapshot::JpegSettings;
use serde::Deserialize;

/// `[snapshots]`: JPEG pictures of the named sources.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SnapshotConfig {
    /// Answer `GET /snapshot/<id>.jpg` on the gateway.
    pub http: bool,
    /// Largest width; larger pictures are scaled down keeping their aspect ratio. 0: the source's own.
    pub max_width: u32,
    /// Largest height. 0: the source's own.
    pub max_height: u32,
    /// JPEG quality, 1 (smallest) to 100 (best).
    pub quality: u8,
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        let jpeg = JpegSettings::default();
        Self { http: true, max_width: jpeg.max_width, max_height: jpeg.max_height, quality: jpeg.quality }
    }
}

impl SnapshotConfig {
    /// The JPEG settings.
    pub fn jpeg(&self) -> JpegSettings {
        JpegSettings { max_width: self.max_width, max_height: self.max_height, quality: self.quality }
    }

    /// Checks what the types alone do not.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=100).contains(&self.quality) {
            let message = format!("must be from 1 to 100, not {}", self.quality);
            return Err(ConfigError::Invalid { key: "snapshots.quality".into(), message });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quality_is_checked() {
        assert!(SnapshotConfig::default().validate().is_ok());
        let e = SnapshotConfig { quality: 0, ..Default::default() }.validate().unwrap_err().to_string();
        assert_eq!(e, "snapshots.quality must be from 1 to 100, not 0");
    }
}
