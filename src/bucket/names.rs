//! Directory entry name rules, shared by every operation that takes a name.

use super::error::{BucketError, Result};

/// Longest name in bytes, as on Linux file systems.
pub const NAME_MAX: usize = 255;

/// Reject names no file system may hold: empty, `.`, `..`, containing `/` or NUL, longer than 255 bytes.
pub fn validate_name(name: &[u8]) -> Result<()> {
    if name.is_empty() {
        return Err(BucketError::InvalidName("empty name"));
    }
    if name == b"." || name == b".." {
        return Err(BucketError::InvalidName("'.' and '..' are reserved"));
    }
    if name.contains(&b'/') {
        return Err(BucketError::InvalidName("name contains '/'"));
    }
    if name.contains(&0) {
        return Err(BucketError::InvalidName("name contains NUL"));
    }
    if name.len() > NAME_MAX {
        return Err(BucketError::NameTooLong);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_names_rejected() {
        for bad in [&b""[..], b".", b"..", b"a/b", b"a\0b"] {
            assert!(
                matches!(validate_name(bad), Err(BucketError::InvalidName(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            validate_name(&[b'x'; 256]),
            Err(BucketError::NameTooLong)
        ));
        validate_name(&[b'x'; 255]).unwrap();
        validate_name("ünïcode ok".as_bytes()).unwrap();
        validate_name(b"...").unwrap();
    }
}
