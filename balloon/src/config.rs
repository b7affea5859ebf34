//! Device configuration space (virtio 1.2 §5.5.4).
//!
//! This module owns the little-endian layout of `struct virtio_balloon_config` and the rules for
//! guest accesses to it: reads may cover any bytes inside the 16-byte structure, writes may only
//! touch `actual` (the only driver-writable field for the features this device offers). Any other
//! access is rejected without panicking; the caller counts it.

/// Size of the configuration space in bytes.
pub const CONFIG_SPACE_SIZE: u64 = 16;
/// Offset of `num_pages` (device-written target, in 4 KiB pages).
pub const OFFSET_NUM_PAGES: u64 = 0;
/// Offset of `actual` (driver-written number of pages in the balloon).
pub const OFFSET_ACTUAL: u64 = 4;
/// Offset of `free_page_hint_cmd_id`.
pub const OFFSET_FREE_PAGE_HINT_CMD_ID: u64 = 8;
/// Offset of `poison_val`.
pub const OFFSET_POISON_VAL: u64 = 12;

/// Why a configuration space access was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ConfigAccessError {
    /// The access is empty or extends past the configuration space.
    OutOfRange,
    /// The write touches a field the driver may not write.
    ReadOnlyField,
}

/// The balloon configuration space.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ConfigSpace {
    pub num_pages: u32,
    pub actual: u32,
    pub free_page_hint_cmd_id: u32,
    pub poison_val: u32,
}

impl ConfigSpace {
    fn to_bytes(self) -> [u8; CONFIG_SPACE_SIZE as usize] {
        let mut b = [0u8; CONFIG_SPACE_SIZE as usize];
        b[0..4].copy_from_slice(&self.num_pages.to_le_bytes());
        b[4..8].copy_from_slice(&self.actual.to_le_bytes());
        b[8..12].copy_from_slice(&self.free_page_hint_cmd_id.to_le_bytes());
        b[12..16].copy_from_slice(&self.poison_val.to_le_bytes());
        b
    }

    /// Byte range `[offset, offset + len)` if it is non-empty and inside `[0, limit)`.
    fn range(offset: u64, len: usize, limit: u64) -> Option<std::ops::Range<usize>> {
        let end = offset.checked_add(u64::try_from(len).ok()?)?;
        if len == 0 || end > limit {
            return None;
        }
        // Both fit in usize: they are bounded by `limit` (16).
        Some(offset as usize..end as usize)
    }

    /// Reads `data.len()` bytes at `offset`. On error `data` is zero-filled.
    pub fn read(&self, offset: u64, data: &mut [u8]) -> Result<(), ConfigAccessError> {
        match Self::range(offset, data.len(), CONFIG_SPACE_SIZE) {
            Some(r) => {
                data.copy_from_slice(&self.to_bytes()[r]);
                Ok(())
            }
            None => {
                data.fill(0);
                Err(ConfigAccessError::OutOfRange)
            }
        }
    }

    /// Writes `data` at `offset`; only bytes of `actual` are writable.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), ConfigAccessError> {
        let r = Self::range(offset, data.len(), CONFIG_SPACE_SIZE)
            .ok_or(ConfigAccessError::OutOfRange)?;
        let actual = OFFSET_ACTUAL as usize..OFFSET_ACTUAL as usize + 4;
        if r.start < actual.start || r.end > actual.end {
            return Err(ConfigAccessError::ReadOnlyField);
        }
        let mut bytes = self.actual.to_le_bytes();
        bytes[r.start - actual.start..r.end - actual.start].copy_from_slice(data);
        self.actual = u32::from_le_bytes(bytes);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ConfigSpace {
        ConfigSpace {
            num_pages: 0x0403_0201,
            actual: 0x0807_0605,
            free_page_hint_cmd_id: 0x0c0b_0a09,
            poison_val: 0x100f_0e0d,
        }
    }

    #[test]
    fn reads_are_little_endian_and_bounded() {
        let c = cfg();
        let mut all = [0u8; 16];
        c.read(0, &mut all).unwrap();
        assert_eq!(all, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]);
        let mut two = [0u8; 2];
        c.read(5, &mut two).unwrap();
        assert_eq!(two, [6, 7]);
        let mut b = [0xffu8; 4];
        assert_eq!(c.read(14, &mut b), Err(ConfigAccessError::OutOfRange));
        assert_eq!(b, [0; 4]);
        assert_eq!(c.read(u64::MAX, &mut b), Err(ConfigAccessError::OutOfRange));
        assert_eq!(c.read(0, &mut []), Err(ConfigAccessError::OutOfRange));
    }

    #[test]
    fn only_actual_is_writable() {
        let mut c = cfg();
        c.write(OFFSET_ACTUAL, &7u32.to_le_bytes()).unwrap();
        assert_eq!(c.actual, 7);
        c.write(OFFSET_ACTUAL + 1, &[1]).unwrap();
        assert_eq!(c.actual, 0x107);
        assert_eq!(
            c.write(OFFSET_NUM_PAGES, &[0; 4]),
            Err(ConfigAccessError::ReadOnlyField)
        );
        assert_eq!(
            c.write(OFFSET_ACTUAL + 2, &[0; 4]),
            Err(ConfigAccessError::ReadOnlyField)
        );
        assert_eq!(
            c.write(OFFSET_POISON_VAL, &[0; 4]),
            Err(ConfigAccessError::ReadOnlyField)
        );
        assert_eq!(
            c.write(u64::MAX - 1, &[0; 4]),
            Err(ConfigAccessError::OutOfRange)
        );
        assert_eq!(c.num_pages, 0x0403_0201);
        assert_eq!(c.poison_val, 0x100f_0e0d);
        assert_eq!(c.actual, 0x107);
    }
}
