//! Reading LUKS2 JSON values the way cryptsetup (through json-c) reads them, so that what bifs
//! accepts, refuses and prints follows cryptsetup on odd but valid metadata too: a number given
//! as a string, a negative KDF cost, a missing optional field.

use serde_json::Value;

/// json-c's `json_object_get_string`: a string as is, other types as their JSON text, a
/// missing value as glibc prints a NULL string.
pub fn text(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "(null)".into(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// json-c's `json_object_get_int64`: integers (clamped), doubles (truncated), booleans,
/// strings holding a number; anything else is 0.
pub fn int64(v: Option<&Value>) -> i64 {
    match v {
        Some(Value::Number(n)) => {
            if let Some(i) = n.as_i64() {
                i
            } else if n.as_u64().is_some() {
                i64::MAX
            } else {
                // `as` saturates, as json-c clamps a double to the int64 range.
                n.as_f64().map_or(0, |f| f as i64)
            }
        }
        Some(Value::Bool(b)) => i64::from(*b),
        Some(Value::String(s)) => parse_int64(s),
        _ => 0,
    }
}

/// json-c's `json_object_get_int`: [`int64`] clamped to the i32 range.
pub fn int32(v: Option<&Value>) -> i32 {
    int64(v).clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32
}

/// json-c's string-to-int64 (strtoll semantics, clamped on overflow, 0 when not a number).
fn parse_int64(s: &str) -> i64 {
    let t = s.trim_start();
    let (neg, digits) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let end = digits
        .bytes()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(digits.len());
    if end == 0 {
        return 0;
    }
    match digits[..end].parse::<i128>() {
        Ok(n) => {
            let n = if neg { -n } else { n };
            n.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
        }
        Err(_) if neg => i64::MIN,
        Err(_) => i64::MAX,
    }
}

/// cryptsetup's `json_str_to_uint64`: strtoull over the whole text (leading blanks and a sign
/// allowed, a negative value wraps), `None` on trailing text or overflow.
pub fn str_to_u64(s: &str) -> Option<u64> {
    let t = s.trim_start_matches([' ', '\t', '\n', '\r', '\x0b', '\x0c']);
    let (neg, digits) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    if digits.is_empty() {
        // strtoull parsed nothing: the end pointer is the start, which is the end only for "".
        return s.is_empty().then_some(0);
    }
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(if neg { n.wrapping_neg() } else { n })
}

/// cryptsetup's `crypt_jobj_get_uint64`: [`str_to_u64`] of the value's text, 0 on failure.
pub fn uint64(v: Option<&Value>) -> u64 {
    str_to_u64(&text(v)).unwrap_or(0)
}

/// cryptsetup's `crypt_jobj_get_uint32`: the int64 value truncated.
pub fn uint32(v: Option<&Value>) -> u32 {
    int64(v) as u32
}

/// json-c's `json_type_int`: a JSON integer (not a float).
pub fn is_int(v: &Value) -> bool {
    v.as_i64().is_some() || v.as_u64().is_some()
}

/// cryptsetup's `numbered`: only decimal digits (the empty string passes, as there).
pub fn numbered(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_digit())
}

/// The members of an array value as strings ([`text`] of each); empty when not an array.
pub fn strings(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Array(a)) => a.iter().map(|x| text(Some(x))).collect(),
        _ => Vec::new(),
    }
}

/// Whether the array `v` holds the string `s` (cryptsetup's `LUKS2_array_jobj`).
pub fn array_has(v: Option<&Value>, s: &str) -> bool {
    matches!(v, Some(Value::Array(a)) if a.iter().any(|x| x.as_str() == Some(s)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strtoull_semantics() {
        assert_eq!(str_to_u64("16384"), Some(16384));
        assert_eq!(str_to_u64(" 7"), Some(7));
        assert_eq!(str_to_u64("-1"), Some(u64::MAX));
        assert_eq!(str_to_u64(""), Some(0));
        assert_eq!(str_to_u64("18446744073709551616"), None);
        assert_eq!(str_to_u64("12a"), None);
        assert_eq!(str_to_u64("dynamic"), None);
    }

    #[test]
    fn json_c_getters() {
        assert_eq!(int64(Some(&json!("42"))), 42);
        assert_eq!(int64(Some(&json!(u64::MAX))), i64::MAX);
        assert_eq!(int64(None), 0);
        assert_eq!(int32(Some(&json!(1u64 << 40))), i32::MAX);
        assert_eq!(text(Some(&json!(5))), "5");
        assert_eq!(text(None), "(null)");
        assert_eq!(uint64(Some(&json!(1000))), 1000);
    }
}
