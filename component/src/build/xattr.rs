//! Inline extended attributes as EROFS stores them: a name prefix index (the standard
//! `user.`, `trusted.`, `security.`, `lustre.` and the two POSIX ACL names), the rest of the
//! name (at most 255 bytes) and the value (at most 65,535 bytes: the size field is 16 bits,
//! so 65,536 is refused rather than wrapped to 0). Names with no standard prefix would need
//! the long-prefix table (INCOMPAT_XATTR_PREFIXES), which is not written: they are refused.

use super::tree::{shown, Node};

/// Largest xattr value: `e_value_size` is 16 bits (65,536 would wrap to 0).
pub const MAX_XATTR_VALUE: usize = 65535;
/// `e_name_len` is 8 bits.
pub const MAX_XATTR_NAME: usize = 255;

/// The standard name prefixes (`e_name_index`); the ACL names are whole names.
const PREFIXES: [(&[u8], u8, bool); 6] = [
    (b"system.posix_acl_access", 2, true),
    (b"system.posix_acl_default", 3, true),
    (b"user.", 1, false),
    (b"trusted.", 4, false),
    (b"lustre.", 5, false),
    (b"security.", 6, false),
];

/// Split an xattr name into its prefix index and the stored suffix.
fn xattr_prefix(name: &[u8]) -> Option<(u8, &[u8])> {
    PREFIXES.iter().find_map(|&(prefix, index, whole)| {
        let rest = name.strip_prefix(prefix)?;
        (whole == rest.is_empty()).then_some((index, rest))
    })
}

/// Can EROFS hold this xattr? The error says why not.
pub fn check_xattr(name: &[u8], value: &[u8]) -> std::result::Result<(), String> {
    let shown = shown(name);
    let (_, suffix) = xattr_prefix(name).ok_or_else(|| {
        format!("xattr {shown:?} has no EROFS name prefix (user., trusted., security., lustre., or a POSIX ACL)")
    })?;
    if suffix.len() > MAX_XATTR_NAME {
        return Err(format!(
            "xattr name {shown:?} is {} bytes after its prefix; EROFS holds at most {MAX_XATTR_NAME}",
            suffix.len()
        ));
    }
    if value.len() > MAX_XATTR_VALUE {
        return Err(format!(
            "xattr {shown:?} has a {}-byte value; EROFS holds at most {MAX_XATTR_VALUE}",
            value.len()
        ));
    }
    Ok(())
}

/// The inline xattr area: a 12-byte header, then entries padded to 4 bytes, sorted by
/// (prefix index, suffix) for a deterministic image.
pub fn encode_xattrs(n: &Node) -> std::result::Result<Vec<u8>, String> {
    if n.xattrs.is_empty() {
        return Ok(Vec::new());
    }
    let mut entries: Vec<(u8, &[u8], &[u8])> = Vec::new();
    for (name, value) in &n.xattrs {
        check_xattr(name, value)?;
        let (index, suffix) = xattr_prefix(name).ok_or("xattr prefix vanished")?;
        entries.push((index, suffix, value));
    }
    entries.sort();
    let mut out = vec![0u8; 12];
    for (index, suffix, value) in entries {
        out.push(suffix.len() as u8);
        out.push(index);
        out.extend_from_slice(&(value.len() as u16).to_le_bytes());
        out.extend_from_slice(suffix);
        out.extend_from_slice(value);
        out.resize(out.len().next_multiple_of(4), 0);
    }
    // i_xattr_icount = 1 + (size - 12) / 4 must fit 16 bits.
    if (out.len() - 12) / 4 + 1 > u16::MAX as usize {
        return Err(format!(
            "its xattrs take {} bytes; an EROFS inode holds at most {} bytes of inline xattrs",
            out.len(),
            12 + 4 * (u16::MAX as usize - 1)
        ));
    }
    Ok(out)
}
