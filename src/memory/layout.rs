//! Guest-physical layout: where each RAM region lands, around the 32-bit MMIO hole.

use serde::Serialize;

/// Start of the 32-bit MMIO hole (devices live here; no RAM).
pub const MMIO_HOLE_START: u64 = 0xC000_0000;
/// End of the 32-bit MMIO hole; RAM continues here.
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;

/// A piece of a region placed at one guest-physical range. A region crossing the hole is
/// split into two extents of one host mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Extent {
    /// Guest-physical start.
    pub gpa: u64,
    /// Length in bytes.
    pub len: u64,
    /// Offset of this extent inside the region's host mapping.
    pub offset: u64,
}

impl Extent {
    /// One past the last guest-physical byte.
    pub fn end(&self) -> u64 {
        self.gpa + self.len
    }
}

/// Places regions of the given `(size, alignment)` one after the other from GPA 0, never
/// inside `[MMIO_HOLE_START, MMIO_HOLE_END)`. Each region starts aligned to its alignment (its
/// backing page size) and is split at the hole at a multiple of that alignment.
pub fn place(regions: &[(u64, u64)]) -> Vec<Vec<Extent>> {
    let mut cursor = 0u64;
    let mut out = Vec::with_capacity(regions.len());
    for &(size, align) in regions {
        let align = align.max(4096);
        cursor = align_up(cursor, align);
        if (MMIO_HOLE_START..MMIO_HOLE_END).contains(&cursor) {
            cursor = MMIO_HOLE_END;
        }
        let mut extents = Vec::new();
        let mut offset = 0;
        while offset < size {
            let room = if cursor < MMIO_HOLE_START {
                (MMIO_HOLE_START - cursor) / align * align
            } else {
                u64::MAX
            };
            if room == 0 {
                cursor = MMIO_HOLE_END;
                continue;
            }
            let len = room.min(size - offset);
            extents.push(Extent {
                gpa: cursor,
                len,
                offset,
            });
            offset += len;
            cursor += len;
            if cursor == MMIO_HOLE_START {
                cursor = MMIO_HOLE_END;
            }
        }
        out.push(extents);
    }
    out
}

/// Rounds `v` up to a multiple of `align` (a power of two).
pub fn align_up(v: u64, align: u64) -> u64 {
    (v + align - 1) & !(align - 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    const G: u64 = 1 << 30;
    const M: u64 = 1 << 20;

    #[test]
    fn small_ram_is_one_extent() {
        assert_eq!(
            place(&[(512 * M, 4096)]),
            vec![vec![Extent {
                gpa: 0,
                len: 512 * M,
                offset: 0
            }]]
        );
    }

    #[test]
    fn large_ram_skips_the_hole() {
        let p = place(&[(4 * G, 4096)]);
        assert_eq!(
            p[0],
            vec![
                Extent {
                    gpa: 0,
                    len: 3 * G,
                    offset: 0
                },
                Extent {
                    gpa: 4 * G,
                    len: G,
                    offset: 3 * G
                }
            ]
        );
    }

    #[test]
    fn regions_follow_each_other_aligned() {
        let p = place(&[(5 * M, 4096), (4 * M, 2 * M), (G, G)]);
        assert_eq!(p[0][0].gpa, 0);
        assert_eq!(p[1][0].gpa, 6 * M, "2M region aligned up");
        assert_eq!(p[2][0].gpa, G, "1G region aligned up");
        let p = place(&[(3 * G, 4096), (G, 2 * M)]);
        assert_eq!(
            p[1],
            vec![Extent {
                gpa: 4 * G,
                len: G,
                offset: 0
            }],
            "region after a full low part starts above the hole"
        );
    }

    #[test]
    fn no_extent_touches_the_hole() {
        for sizes in [[G + 3, 2 * G], [3 * G - 4096, 8192], [2 * G + 1, G + 1]] {
            let regions: Vec<(u64, u64)> = sizes.iter().map(|s| (s & !4095, 4096)).collect();
            for (i, ex) in place(&regions).iter().enumerate() {
                assert_eq!(ex.iter().map(|e| e.len).sum::<u64>(), regions[i].0);
                for e in ex {
                    assert!(
                        e.end() <= MMIO_HOLE_START || e.gpa >= MMIO_HOLE_END,
                        "{e:?}"
                    );
                }
            }
        }
    }
}
