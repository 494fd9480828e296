//! Certificate serial numbers from caller-supplied random bytes (this crate reads no randomness).

/// Turns 16 random bytes into a serial that is a positive INTEGER (top bit clear) of exactly 16
/// bytes (first byte non-zero, so DER never shortens it): 121 bits of entropy, as CAs use.
pub fn serial_from_random(mut bytes: [u8; 16]) -> [u8; 16] {
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    bytes
}

#[cfg(test)]
mod tests {
    use super::serial_from_random;

    #[test]
    fn positive_and_full_length() {
        for first in [0x00, 0x01, 0x7f, 0x80, 0xff] {
            let s = serial_from_random([first; 16]);
            assert!(s[0] & 0x80 == 0 && s[0] != 0, "{first:#x} -> {:#x}", s[0]);
            assert_eq!(&s[1..], &[first; 15]);
        }
    }
}
