//! The network interfaces the user asked for (`--net tap[=NAME][,mac=MAC][,id=NAME]`,
//! repeatable), parsed and checked without touching the host. Opening the tap is the net
//! device's work (`crate::devices::net`).

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// One virtio-net interface over a tap.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetConfig {
    /// The tap to attach to (created if no interface has that name); `None`: a new tap the
    /// kernel names (`tapN`), reported at start.
    #[serde(default)]
    pub tap: Option<String>,
    /// The guest's MAC address, `aa:bb:cc:dd:ee:ff`. Default `52:54:00:12:34:56` plus the
    /// interface's index (QEMU's default address for the first one).
    pub mac: String,
    /// The interface's name in the API. Default `net0`, `net1`, ... in `--net` order.
    pub id: String,
}

/// The default MAC address of interface `index`.
pub fn default_mac(index: usize) -> String {
    format!("52:54:00:12:34:{:02x}", (0x56 + index) % 256)
}

/// Parses `aa:bb:cc:dd:ee:ff` (a unicast address).
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let parts: Vec<&str> = text.split(':').collect();
    if parts.len() != 6 {
        return None;
    }
    let mut mac = [0u8; 6];
    for (m, p) in mac.iter_mut().zip(&parts) {
        if p.len() != 2 {
            return None;
        }
        *m = u8::from_str_radix(p, 16).ok()?;
    }
    (mac[0] & 1 == 0).then_some(mac)
}

impl NetConfig {
    /// Parses one `--net` value for interface `index`.
    pub fn parse(index: usize, text: &str) -> Result<Self, ConfigError> {
        let err = |option: &str, reason: String| ConfigError::Net {
            net: index,
            option: option.to_string(),
            reason,
        };
        let mut n = NetConfig {
            tap: None,
            mac: default_mac(index),
            id: format!("net{index}"),
        };
        let parts = super::option_parts(text).map_err(|k| err(k, "given twice".into()))?;
        if !parts.iter().any(|(k, _)| *k == "tap") {
            return Err(err(
                "tap",
                "missing; give tap=NAME (an existing or new tap) or tap (a new one)".into(),
            ));
        }
        for (k, v) in parts {
            match (k, v) {
                ("tap", None) => n.tap = None,
                ("tap", Some(name)) => n.tap = Some(name.to_string()),
                ("mac", Some(m)) => n.mac = m.to_ascii_lowercase(),
                ("id", Some(i)) => n.id = i.to_string(),
                (other, _) => {
                    return Err(err(
                        other,
                        "unknown or missing its value; use tap (a new tap), tap=NAME, \
                         mac=aa:bb:cc:dd:ee:ff, id=NAME"
                            .into(),
                    ))
                }
            }
        }
        n.check(index)?;
        Ok(n)
    }

    /// Rules that need no host state.
    pub fn check(&self, index: usize) -> Result<(), ConfigError> {
        let err = |option: &str, reason: String| ConfigError::Net {
            net: index,
            option: option.to_string(),
            reason,
        };
        if let Some(t) = self.tap.as_deref().filter(|t| !::net::tap::valid_name(t)) {
            return Err(err(
                "tap",
                format!(
                    "`{t}`: an interface name is 1 to {} characters without `/`, `%`, `:` or \
                     white space",
                    ::net::tap::MAX_NAME_BYTES
                ),
            ));
        }
        if parse_mac(&self.mac).is_none() {
            return Err(err(
                "mac",
                format!(
                    "`{}`: write six hex bytes like 52:54:00:12:34:56 (a unicast address: the \
                     first byte even)",
                    self.mac
                ),
            ));
        }
        if !super::valid_device_id(&self.id, 32) {
            return Err(err(
                "id",
                format!(
                    "`{}`: 1 to 32 characters of letters, digits, `-`, `_` or `.`",
                    self.id
                ),
            ));
        }
        Ok(())
    }

    /// The MAC address as bytes (checked by [`NetConfig::check`]).
    pub fn mac_bytes(&self) -> [u8; 6] {
        parse_mac(&self.mac).unwrap_or_default()
    }
}

/// Checks a VM's interfaces together: each on its own, ids, taps and MACs distinct, and a
/// Linux guest to drive them (the built-in guest has no virtio-net driver).
pub fn check_nets(nets: &[NetConfig], linux: bool) -> Result<(), ConfigError> {
    for (i, n) in nets.iter().enumerate() {
        n.check(i)?;
        let clash = |what: &str, j: usize| ConfigError::Net {
            net: i,
            option: what.into(),
            reason: format!("the same as interface {j}'s; give each interface its own {what}="),
        };
        for (j, o) in nets[..i].iter().enumerate() {
            if o.id == n.id {
                return Err(clash("id", j));
            }
            if o.tap.is_some() && o.tap == n.tap {
                return Err(clash("tap", j));
            }
            if o.mac_bytes() == n.mac_bytes() {
                return Err(clash("mac", j));
            }
        }
    }
    if !nets.is_empty() && !linux {
        return Err(ConfigError::Invalid(
            "--net needs a Linux guest (--kernel): the built-in guest has no virtio-net driver"
                .into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_options_parse_with_defaults() {
        let n = NetConfig::parse(0, "tap=mv0").unwrap();
        assert_eq!(
            n,
            NetConfig {
                tap: Some("mv0".into()),
                mac: "52:54:00:12:34:56".into(),
                id: "net0".into()
            }
        );
        let n = NetConfig::parse(1, "tap,mac=02:AA:bb:00:00:01,id=uplink").unwrap();
        assert_eq!(n.tap, None);
        assert_eq!(n.mac_bytes(), [2, 0xaa, 0xbb, 0, 0, 1]);
        assert_eq!(n.id, "uplink");
        assert_eq!(NetConfig::parse(2, "tap").unwrap().mac, "52:54:00:12:34:58");
    }

    #[test]
    fn bad_net_options_say_what_to_write() {
        let e = |t: &str| NetConfig::parse(1, t).unwrap_err().to_string();
        assert!(e("mac=52:54:00:12:34:56").contains("missing; give tap=NAME"));
        assert!(e("tap=a,tap=b").contains("given twice"));
        assert!(e("tap=way-too-long-for-ifnamsiz").contains("1 to 15"));
        assert!(e("tap=a/b").contains("without `/`"));
        assert!(e("tap=a,mac=01:00:00:00:00:01").contains("unicast"));
        assert!(e("tap=a,mac=52:54:00:12:34").contains("six hex bytes"));
        assert!(e("tap=a,model=e1000").contains("unknown"));
        assert!(
            e("tap=a,id=").starts_with("net 1: option `id`"),
            "{}",
            e("tap=a,id=")
        );
    }

    #[test]
    fn interfaces_need_distinct_names_and_a_linux_guest() {
        let a = NetConfig::parse(0, "tap=t0").unwrap();
        let b = NetConfig::parse(1, "tap=t0").unwrap();
        let e = check_nets(&[a.clone(), b], true).unwrap_err().to_string();
        assert!(e.contains("interface 0's") && e.contains("tap="), "{e}");
        let c = NetConfig::parse(1, "tap,mac=52:54:00:12:34:56").unwrap();
        let e = check_nets(&[a.clone(), c], true).unwrap_err().to_string();
        assert!(e.contains("mac="), "{e}");
        // Two new taps are fine: the kernel names each.
        let (d, f) = (
            NetConfig::parse(0, "tap").unwrap(),
            NetConfig::parse(1, "tap").unwrap(),
        );
        check_nets(&[d, f], true).unwrap();
        let e = check_nets(std::slice::from_ref(&a), false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--kernel"), "{e}");
    }
}
