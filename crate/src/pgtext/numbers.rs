//! Numbers as the server prints them: float4/float8 (extra_float_digits ≥ 1), numeric, money.

use std::fmt::Write as _;

use super::{fixed, Res};

/// float8out with extra_float_digits ≥ 1 (the default since PostgreSQL 12): the shortest
/// representation that reads back exactly, in `%g`-like layout.
pub(super) fn float8_text(v: f64, s: &mut String) {
    float_text(v, &format!("{:e}", v.abs()), 15, s)
}

/// `exp_form` is Rust's shortest `{:e}` output of |v| (`1.25e-7`); `sci_from` is the decimal
/// exponent from which PostgreSQL switches to scientific notation (15 for float8, 6 for float4).
pub(super) fn float_text(v: f64, exp_form: &str, sci_from: i32, s: &mut String) {
    if v.is_nan() {
        s.push_str("NaN");
        return;
    }
    if v.is_infinite() {
        s.push_str(if v > 0.0 { "Infinity" } else { "-Infinity" });
        return;
    }
    if v.is_sign_negative() {
        s.push('-');
    }
    if v == 0.0 {
        s.push('0');
        return;
    }
    let (mantissa, exp) = exp_form.split_once('e').unwrap_or((exp_form, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if (-4..sci_from).contains(&exp) {
        if exp < 0 {
            s.push_str("0.");
            for _ in 0..(-exp - 1) {
                s.push('0');
            }
            s.push_str(&digits);
        } else {
            let int_len = exp as usize + 1;
            if digits.len() <= int_len {
                s.push_str(&digits);
                for _ in digits.len()..int_len {
                    s.push('0');
                }
            } else {
                s.push_str(&digits[..int_len]);
                s.push('.');
                s.push_str(&digits[int_len..]);
            }
        }
    } else {
        s.push_str(&digits[..1]);
        if digits.len() > 1 {
            s.push('.');
            s.push_str(&digits[1..]);
        }
        let _ = write!(s, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    }
}

/// The double nearest to a float4's shortest decimal form: what node-postgres's
/// `parseFloat` makes of the server's text (0.1::float4 → 0.1, not 0.10000000149011612).
pub(crate) fn widen_float4(f: f32) -> f64 {
    if !f.is_finite() {
        return f64::from(f);
    }
    let mut text = String::with_capacity(24);
    let _ = write!(text, "{f:e}");
    text.parse().unwrap_or(f64::from(f))
}

/// PostgreSQL's binary numeric (base-10000 digits) to its text form.
pub(crate) fn numeric_text(raw: &[u8], s: &mut String) -> Res {
    let rd = |at: usize| -> Result<u16, String> { fixed(raw, at, "numeric").map(u16::from_be_bytes) };
    let ndigits = rd(0)? as usize;
    let weight = rd(2)? as i16 as i32;
    let sign = rd(4)?;
    let dscale = rd(6)? as i32;
    match sign {
        0xC000 => {
            s.push_str("NaN");
            return Ok(());
        }
        0xD000 => {
            s.push_str("Infinity");
            return Ok(());
        }
        0xF000 => {
            s.push_str("-Infinity");
            return Ok(());
        }
        _ => {}
    }
    let digit = |i: i32| -> Result<u16, String> {
        if i < 0 || i as usize >= ndigits {
            Ok(0)
        } else {
            rd(8 + 2 * i as usize)
        }
    };
    if sign == 0x4000 {
        s.push('-');
    }
    if weight < 0 {
        s.push('0');
    } else {
        for i in 0..=weight {
            let d = digit(i)?;
            if i == 0 {
                let _ = write!(s, "{d}");
            } else {
                let _ = write!(s, "{d:04}");
            }
        }
    }
    if dscale > 0 {
        s.push('.');
        let mut written = 0;
        let mut i = weight + 1;
        while written < dscale {
            let group = format!("{:04}", digit(i)?);
            for c in group.chars() {
                if written < dscale {
                    s.push(c);
                    written += 1;
                }
            }
            i += 1;
        }
    }
    Ok(())
}

/// cash_out in the C / en_US locale: `-$1,234.56`.
pub(super) fn money_text(cents: i64, s: &mut String) {
    let abs = cents.unsigned_abs();
    if cents < 0 {
        s.push('-');
    }
    s.push('$');
    let whole = (abs / 100).to_string();
    for (i, c) in whole.chars().enumerate() {
        if i > 0 && (whole.len() - i).is_multiple_of(3) {
            s.push(',');
        }
        s.push(c);
    }
    let _ = write!(s, ".{:02}", abs % 100);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f8(v: f64) -> String {
        let mut s = String::new();
        float8_text(v, &mut s);
        s
    }

    #[test]
    fn floats_like_float8out() {
        assert_eq!(f8(1.0), "1");
        assert_eq!(f8(-0.0), "-0");
        assert_eq!(f8(0.1), "0.1");
        assert_eq!(f8(1e20), "1e+20");
        assert_eq!(f8(1e-300), "1e-300");
        assert_eq!(f8(123456789012345.0), "123456789012345");
        assert_eq!(f8(1234567890123456.0), "1.234567890123456e+15");
        assert_eq!(f8(0.0001), "0.0001");
        assert_eq!(f8(0.00001234), "1.234e-05");
        assert_eq!(f8(f64::NAN), "NaN");
        assert_eq!(f8(f64::NEG_INFINITY), "-Infinity");
    }

    #[test]
    fn numeric_to_text() {
        let numeric = |raw: &[u8]| {
            let mut s = String::new();
            // A test: a failure here is the test failing.
            numeric_text(raw, &mut s).expect("numeric");
            s
        };
        // 12345.678 = digits [1, 2345, 6780], weight 1, dscale 3
        assert_eq!(numeric(&[0, 3, 0, 1, 0, 0, 0, 3, 0, 1, 0x09, 0x29, 0x1a, 0x7c]), "12345.678");
        // -0.05 = digits [500], weight -1, dscale 2
        assert_eq!(numeric(&[0, 1, 0xff, 0xff, 0x40, 0, 0, 2, 0x01, 0xf4]), "-0.05");
        assert_eq!(numeric(&[0, 0, 0, 0, 0, 0, 0, 0]), "0");
    }
}
