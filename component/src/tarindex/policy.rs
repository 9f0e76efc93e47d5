//! Which inputs go together (docs/formats.md, "The device"): a gzip blob needs its zinfo,
//! a plain tar takes none. The checks are here, not in the wasm-only bindings, so that
//! they are unit-tested natively.

use crate::error::{Error, Result};
use crate::gzran::gzip::MAGIC as GZIP_MAGIC;
use crate::remote::{BlobInfo, Compression};

/// A remote layer's media type decides whether a zinfo belongs with it. A plain URL says
/// nothing ([`Compression::Unknown`]); the blob's first bytes decide then (see
/// [`check_plain_head`]).
pub fn check_zinfo_for_layer(info: &BlobInfo, has_zinfo: bool) -> Result<()> {
    match (info.compression, has_zinfo) {
        (Compression::Gzip, false) => Err(Error::bad(format!(
            "the layer is gzip ({}); a zinfo is needed for it",
            info.media_type.as_deref().unwrap_or("gzip")
        ))
        .in_file(info.url.clone())
        .with_field("mediaType")),
        (Compression::Uncompressed, true) => Err(Error::bad(format!(
            "the layer is an uncompressed tar ({}); it takes no zinfo",
            info.media_type.as_deref().unwrap_or("tar")
        ))
        .in_file(info.url.clone())
        .with_field("mediaType")),
        _ => Ok(()),
    }
}

/// A blob given without a zinfo must be the tar itself, not gzip: `head` is its first
/// (up to) two bytes.
pub fn check_plain_head(head: &[u8]) -> Result<()> {
    if head == GZIP_MAGIC {
        return Err(Error::bad(
            "starts with the gzip magic (1f 8b) but no zinfo was given; give the layer's \
             zinfo with it, or the uncompressed tar",
        )
        .in_file("blob")
        .at(0));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Kind;

    fn info(compression: Compression) -> BlobInfo {
        BlobInfo {
            url: "https://r.io/v2/a/blobs/sha256:00".into(),
            size: 10,
            digest: None,
            media_type: Some("application/vnd.oci.image.layer.v1.tar+gzip".into()),
            compression,
            manifest_digest: None,
            layer_index: Some(0),
            platform: None,
            pinned_reference: None,
        }
    }

    #[test]
    fn gzip_layer_needs_a_zinfo() {
        let err = check_zinfo_for_layer(&info(Compression::Gzip), false).unwrap_err();
        assert!(err.is(Kind::BadInput), "{err}");
        assert!(err.message().contains("tar+gzip"), "{err}");
        assert_eq!(
            err.file.as_deref(),
            Some("https://r.io/v2/a/blobs/sha256:00")
        );
        assert!(check_zinfo_for_layer(&info(Compression::Gzip), true).is_ok());
    }

    #[test]
    fn plain_layer_takes_no_zinfo() {
        let err = check_zinfo_for_layer(&info(Compression::Uncompressed), true).unwrap_err();
        assert!(err.message().contains("takes no zinfo"), "{err}");
        assert!(check_zinfo_for_layer(&info(Compression::Uncompressed), false).is_ok());
        assert!(check_zinfo_for_layer(&info(Compression::Unknown), true).is_ok());
        assert!(check_zinfo_for_layer(&info(Compression::Unknown), false).is_ok());
    }

    #[test]
    fn gzip_head_without_zinfo_is_refused() {
        let err = check_plain_head(&[0x1f, 0x8b]).unwrap_err();
        assert!(
            err.message()
                .starts_with("blob: starts with the gzip magic"),
            "{err}"
        );
        assert!(check_plain_head(b"us").is_ok());
        assert!(check_plain_head(&[0x1f]).is_ok());
    }
}
