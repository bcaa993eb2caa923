//! Kubernetes resource quantities (`100m`, `1Gi`, `2`, `1e3`) as integers: CPU in millicores,
//! everything else in whole units (bytes, counts), rounding up as Kubernetes does.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// Parses a quantity into thousandths of a unit (millis), rounding up.
#[must_use]
pub fn parse_millis(text: &str) -> Option<i128> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let (number, exponent_suffix) = match suffix.strip_prefix(['e', 'E']) {
        Some(exponent) => (number, exponent.parse::<i32>().ok().map(|e| 10f64.powi(e))),
        None => (number, None),
    };
    let multiplier: f64 = match (suffix, exponent_suffix) {
        (_, Some(m)) => m,
        ("", _) => 1.0,
        ("n", _) => 1e-9,
        ("u", _) => 1e-6,
        ("m", _) => 1e-3,
        ("k", _) => 1e3,
        ("M", _) => 1e6,
        ("G", _) => 1e9,
        ("T", _) => 1e12,
        ("P", _) => 1e15,
        ("E", _) => 1e18,
        ("Ki", _) => 1024.0,
        ("Mi", _) => 1024f64.powi(2),
        ("Gi", _) => 1024f64.powi(3),
        ("Ti", _) => 1024f64.powi(4),
        ("Pi", _) => 1024f64.powi(5),
        ("Ei", _) => 1024f64.powi(6),
        _ => return None,
    };
    let value: f64 = number.parse().ok()?;
    Some((value * multiplier * 1000.0).ceil() as i128)
}

/// CPU in millicores.
#[must_use]
pub fn cpu_millis(quantity: &Quantity) -> i64 {
    parse_millis(&quantity.0).map_or(0, |m| m.clamp(0, i128::from(i64::MAX)) as i64)
}

/// Whole units (bytes, counts), rounded up.
#[must_use]
pub fn units(quantity: &Quantity) -> i64 {
    parse_millis(&quantity.0).map_or(0, |m| {
        ((m + 999) / 1000).clamp(0, i128::from(i64::MAX)) as i64
    })
}

/// Millicores as a quantity (`250m`, or `2` for whole cores).
#[must_use]
pub fn format_cpu(millis: i64) -> Quantity {
    if millis % 1000 == 0 {
        Quantity((millis / 1000).to_string())
    } else {
        Quantity(format!("{millis}m"))
    }
}

/// Bytes as a quantity (`128Mi` when exact, else bytes).
#[must_use]
pub fn format_bytes(bytes: i64) -> Quantity {
    for (suffix, size) in [("Gi", 1i64 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)] {
        if bytes != 0 && bytes % size == 0 {
            return Quantity(format!("{}{suffix}", bytes / size));
        }
    }
    Quantity(bytes.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_kubernetes_uses() {
        assert_eq!(cpu_millis(&Quantity("100m".into())), 100);
        assert_eq!(cpu_millis(&Quantity("2".into())), 2000);
        assert_eq!(cpu_millis(&Quantity("0.5".into())), 500);
        assert_eq!(cpu_millis(&Quantity("1500u".into())), 2);
        assert_eq!(units(&Quantity("1Gi".into())), 1 << 30);
        assert_eq!(units(&Quantity("128M".into())), 128_000_000);
        assert_eq!(units(&Quantity("1e3".into())), 1000);
        assert_eq!(units(&Quantity("110".into())), 110);
        assert_eq!(parse_millis("lots"), None);
        assert_eq!(format_cpu(250).0, "250m");
        assert_eq!(format_cpu(3000).0, "3");
        assert_eq!(format_bytes(256 << 20).0, "256Mi");
    }
}
