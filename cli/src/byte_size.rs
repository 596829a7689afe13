//! Byte sizes on the command line: `1048576`, `512K`, `10MiB`, `2G`, `1.5GiB`.
//!
//! Suffixes are binary (K = KiB = 1024), the way people size files on disk; `B` is optional
//! and case does not matter.

/// Parses a byte size for clap; the error says what is accepted.
pub(crate) fn parse_byte_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(usage(text)),
    };
    let bytes = if let Ok(whole) = number.parse::<u64>() {
        whole.checked_mul(1u64 << shift)
    } else {
        let value: f64 = number.parse().map_err(|_| usage(text))?;
        let bytes = (value * (1u64 << shift) as f64).round();
        (bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64).then_some(bytes as u64)
    };
    bytes.ok_or_else(|| format!("{text:?} is too large a size"))
}

fn usage(text: &str) -> String {
    format!("{text:?} is not a size: use bytes or a number with K, M, G or T (binary), e.g. 500M")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_suffixed_sizes() {
        assert_eq!(parse_byte_size("1048576"), Ok(1_048_576));
        assert_eq!(parse_byte_size("512K"), Ok(512 * 1024));
        assert_eq!(parse_byte_size("10MiB"), Ok(10 << 20));
        assert_eq!(parse_byte_size("2g"), Ok(2 << 30));
        assert_eq!(parse_byte_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_byte_size("7 mb"), Ok(7 << 20));
        assert_eq!(parse_byte_size("0"), Ok(0));
    }

    #[test]
    fn nonsense_is_refused_with_a_hint() {
        for bad in ["", "M", "ten", "5X", "-1", "1.2.3", "5 M B"] {
            let err = parse_byte_size(bad).unwrap_err();
            assert!(err.contains("e.g. 500M"), "{bad}: {err}");
        }
        assert!(parse_byte_size("99999999999T").is_err());
    }
}
