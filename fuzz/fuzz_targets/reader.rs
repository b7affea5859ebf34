//! The byte reader the fuzz targets decode their inputs with (included by each target with
//! `#[path = "reader.rs"] mod reader;`).

/// Reads little-endian fields; past the end everything reads as zero.
pub struct Reader<'a>(pub &'a [u8]);

impl Reader<'_> {
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a.to_vec()
    }
    pub fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let b = self.bytes(N);
        out[..b.len()].copy_from_slice(&b);
        out
    }
    pub fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }
    /// A guest-physical address: a u32, except that values from 0xffff_0000 map to the top of
    /// the 64-bit space (to reach overflow checks).
    pub fn addr(&mut self) -> u64 {
        let v = self.u32();
        if v >= 0xffff_0000 {
            u64::MAX - u64::from(0xffff_ffff - v)
        } else {
            u64::from(v)
        }
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}
