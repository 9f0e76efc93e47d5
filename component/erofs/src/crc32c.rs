//! CRC32C (Castagnoli), reflected, table driven. The EROFS superblock checksum uses it with seed
//! `0xFFFF_FFFF` and no final inversion, so [`crc32c`] returns the raw register.

/// Reflected Castagnoli polynomial.
const POLY: u32 = 0x82F6_3B78;

// Evaluated at compile time only: an out-of-bounds index or overflow here would be a build error,
// never a runtime panic.
#[allow(clippy::indexing_slicing, clippy::arithmetic_side_effects)]
const fn make_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0usize;
    while i < 256 {
        // `i < 256`, so the cast is exact.
        #[allow(clippy::cast_possible_truncation)]
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { (c >> 1) ^ POLY } else { c >> 1 };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
}

static TABLE: [u32; 256] = make_table();

/// Update a CRC32C register `crc` with `data`. No pre- or post-inversion is applied.
pub fn crc32c(mut crc: u32, data: &[u8]) -> u32 {
    for &b in data {
        let idx = usize::from(crc.to_le_bytes()[0] ^ b);
        let t = TABLE.get(idx).copied().unwrap_or(0);
        crc = t ^ (crc >> 8);
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::crc32c;

    #[test]
    fn standard_check_value() {
        // The usual CRC-32C check value is for "123456789" with pre- and post-inversion.
        assert_eq!(!crc32c(!0, b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(0xFFFF_FFFF, b""), 0xFFFF_FFFF);
    }
}
