//! The disks the user asked for (`--disk path=IMAGE[,readonly=on][,id=NAME][,direct=on]`,
//! repeatable), parsed and checked without touching the host. Opening and locking the image is
//! the block device's work (`crate::devices::block`).

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

use super::ConfigError;

/// Most bytes of a disk id (what the guest reads with `VIRTIO_BLK_T_GET_ID`).
pub const MAX_DISK_ID_BYTES: usize = 20;

/// One virtio-blk disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskConfig {
    /// The raw image file.
    pub path: PathBuf,
    /// The guest may only read.
    #[serde(default)]
    pub read_only: bool,
    /// The disk's name: the API's device id and the serial the guest reads
    /// (`/sys/block/vdX/serial`). Default `vda`, `vdb`, ... in `--disk` order (the names Linux
    /// gives them).
    pub id: String,
    /// Open the image with `O_DIRECT` (bypass the host page cache; the guest sees 4 KiB blocks).
    #[serde(default)]
    pub direct: bool,
}

/// The default id of disk `index`: `vda`, `vdb`, ..., `vdz`, `vdaa`, ... (Linux's naming).
pub fn default_disk_id(index: usize) -> String {
    let mut suffix = Vec::new();
    let mut n = index;
    loop {
        suffix.push(b'a' + (n % 26) as u8);
        if n < 26 {
            break;
        }
        n = n / 26 - 1;
    }
    suffix.reverse();
    format!("vd{}", String::from_utf8(suffix).expect("ASCII"))
}

impl DiskConfig {
    /// Parses one `--disk` value for disk `index`.
    pub fn parse(index: usize, text: &str) -> Result<Self, ConfigError> {
        let err = |option: &str, reason: String| ConfigError::Disk {
            disk: index,
            option: option.to_string(),
            reason,
        };
        let mut d = DiskConfig {
            path: PathBuf::new(),
            read_only: false,
            id: default_disk_id(index),
            direct: false,
        };
        let parts = super::option_parts(text).map_err(|k| err(k, "given twice".into()))?;
        for (k, v) in parts {
            let Some(v) = v else {
                return Err(err(k, "expected key=value, e.g. path=disk.img".into()));
            };
            let on_off = |v: &str| match v {
                "on" | "true" | "yes" | "1" => Ok(true),
                "off" | "false" | "no" | "0" => Ok(false),
                o => Err(err(k, format!("`{o}`: write on or off"))),
            };
            match k {
                "path" | "file" => d.path = PathBuf::from(v),
                "readonly" | "read_only" | "ro" => d.read_only = on_off(v)?,
                "id" => d.id = v.to_string(),
                "direct" => d.direct = on_off(v)?,
                other => {
                    return Err(err(
                        other,
                        "unknown; use path=IMAGE, readonly=on, id=NAME, direct=on".into(),
                    ))
                }
            }
        }
        d.check(index)?;
        Ok(d)
    }

    /// Rules that need no host state.
    pub fn check(&self, index: usize) -> Result<(), ConfigError> {
        let err = |option: &str, reason: String| ConfigError::Disk {
            disk: index,
            option: option.to_string(),
            reason,
        };
        if self.path.as_os_str().is_empty() {
            return Err(err(
                "path",
                "missing; give the raw image file, e.g. path=disk.img".into(),
            ));
        }
        if !super::valid_device_id(&self.id, MAX_DISK_ID_BYTES) {
            return Err(err(
                "id",
                format!(
                    "`{}`: 1 to {MAX_DISK_ID_BYTES} characters of letters, digits, `-`, `_` or `.`",
                    self.id
                ),
            ));
        }
        Ok(())
    }
}

/// Checks a VM's disks together: each on its own, ids distinct, and a Linux guest to drive
/// them (the built-in guest has no virtio-blk driver).
pub fn check_disks(disks: &[DiskConfig], linux: bool) -> Result<(), ConfigError> {
    for (i, d) in disks.iter().enumerate() {
        d.check(i)?;
        if let Some(j) = disks[..i].iter().position(|o| o.id == d.id) {
            return Err(ConfigError::Disk {
                disk: i,
                option: "id".into(),
                reason: format!(
                    "`{}` is also disk {j}'s id; give each disk its own id=",
                    d.id
                ),
            });
        }
    }
    if !disks.is_empty() && !linux {
        return Err(ConfigError::Invalid(
            "--disk needs a Linux guest (--kernel): the built-in guest has no virtio-blk driver"
                .into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_options_parse_with_defaults() {
        let d = DiskConfig::parse(0, "path=/img/a.raw").unwrap();
        assert_eq!(
            d,
            DiskConfig {
                path: "/img/a.raw".into(),
                read_only: false,
                id: "vda".into(),
                direct: false
            }
        );
        let d = DiskConfig::parse(1, "path=b.img,readonly=on,id=data-1,direct=on").unwrap();
        assert!(d.read_only && d.direct);
        assert_eq!(d.id, "data-1");
        assert_eq!(DiskConfig::parse(27, "path=x").unwrap().id, "vdab");
        assert_eq!(default_disk_id(25), "vdz");
        assert_eq!(default_disk_id(26), "vdaa");
    }

    #[test]
    fn bad_disk_options_say_what_to_write() {
        let e = |t: &str| DiskConfig::parse(2, t).unwrap_err().to_string();
        assert!(
            e("readonly=on").contains("path=disk.img"),
            "{}",
            e("readonly=on")
        );
        assert!(e("path=a,path=b").contains("given twice"));
        assert!(e("path=a,readonly=maybe").contains("write on or off"));
        assert!(e("path=a,cache=none").contains("unknown"));
        assert!(e("path=a,id=way-too-long-for-a-serial").contains("1 to 20"));
        assert!(e("path=a,id=a b").contains("letters, digits"));
        assert!(e("a.img").contains("key=value"));
        assert!(
            e("path=a,id=").starts_with("disk 2: option `id`"),
            "{}",
            e("path=a,id=")
        );
    }

    #[test]
    fn disks_need_distinct_ids_and_a_linux_guest() {
        let a = DiskConfig::parse(0, "path=a").unwrap();
        let b = DiskConfig::parse(1, "path=b,id=vda").unwrap();
        let e = check_disks(&[a.clone(), b], true).unwrap_err().to_string();
        assert!(e.contains("also disk 0's id"), "{e}");
        let e = check_disks(std::slice::from_ref(&a), false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--kernel"), "{e}");
        check_disks(&[a], true).unwrap();
    }
}
